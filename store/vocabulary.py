"""Names every printer, screen and parser shares, in a module that imports nothing: the CLI builds its parser
from these without loading the store, and the store's own tables and exports use the same tuples."""

FORMATS = ("csv", "md", "json", "html")  # export formats
# Comparison metrics in the order the CLI, the Compare screen (`m` cycles) and the tables offer them:
# key -> (label, higher is better).
METRICS = {
    "tokens_per_s": ("tok/s", True),
    "latency_s": ("latency s", False),
    "ttft_s": ("TTFT s", False),
    "decode_tps": ("decode tok/s", True),
    "peak_mem": ("peak MB", False),
    # serving cells (server engines; store/serving.py): goodput and attainment need --slo
    "goodput_rps": ("goodput req/s", True),
    "slo_attainment": ("SLO met", True),
    "ttft_p99": ("TTFT p99 s", False),
    "itl_p99": ("ITL p99 s", False),
}
