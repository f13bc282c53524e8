"""Results of the tools people already use, read into codebench runs.

llama.cpp's llama-bench (-o json, jsonl, csv, sql) and llama-batched-bench (--output-format jsonl), and vLLM's
`bench serve` (--save-result) and `bench throughput` (--output-json) files each become runs of the same
document a codebench JSON export is. That document then passes the export's own checks (store.importdoc.check)
before the database is opened: hostile text stays text, absurd numbers are refused. Run ids come from the
file's bytes, so importing a file twice adds nothing. What has no place in codebench's schema is kept verbatim
in the run's notes; the source tool, its version and the file's format are in the run's runtime.source.
"""

from store.peers.detect import read_peer

__all__ = ["read_peer"]
