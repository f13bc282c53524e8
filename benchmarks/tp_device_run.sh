#!/usr/bin/env bash
# Tensor parallelism on one host (issue 9 part 1), the device run behind docs/results/: the same grid
# with --tp 1 and --tp 2 (hf-generate through torchrun, NCCL), then per-GPU peak memory, token identity
# between the two runs, and a Markdown export. Run from the repo root; OUT = a folder for the results.
#   two H200s:   OUT=$OUT bash benchmarks/tp_device_run.sh
#   CPU dry run: NO_WHEELS=1 DEVICE=cpu MODEL=tiny PRECISION=fp32 OUT=/tmp/tp bash benchmarks/tp_device_run.sh
# Knobs (env): MODEL (codellama-13b:random), PRECISION (fp16), DEVICE (cuda), TP (1,2), ENGINES (hf-generate),
# BATCH (1,8,32), INPUT_LEN (128,1024), OUTPUT_LEN (64), REPEATS (2), EXTRA (more `run` flags).
# Light dependencies the GPU image lacks travel as wheels in .whl/ (see gpu_device_run.sh).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false CODEBENCH_CACHE=${CODEBENCH_CACHE:-/tmp/cbcache}
# NVLink multicast stays off on shared hosts (the device notes: it can take the GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:?set OUT to a results folder}
mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
PY=${PY:-python3}
log="$OUT/tp.log"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
  $PY -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| GPUs', torch.cuda.device_count())"
} 2>&1 | tee "$log"
# shellcheck disable=SC2086  # EXTRA is a list of flags
timeout "${STUDY_TIMEOUT:-540}" $PY -m tui.cli run --model "${MODEL:-codellama-13b:random}" --engine "${ENGINES:-hf-generate}" \
  --tp "${TP:-1,2}" --precision "${PRECISION:-fp16}" --device "${DEVICE:-cuda}" --batch "${BATCH:-1,8,32}" \
  --input-len "${INPUT_LEN:-128,1024}" --output-len "${OUTPUT_LEN:-64}" --warmup 1 --iters 2 --repeats "${REPEATS:-2}" \
  --name "tp ${MODEL:-codellama-13b:random}" --quiet ${EXTRA:-} --db "$OUT/tp.db" 2>&1 | tee -a "$log"
echo "study exit: ${PIPESTATUS[0]}" | tee -a "$log"
$PY - "$OUT/tp.db" <<'EOF' 2>&1 | tee "$OUT/tp_memory.txt" | tee -a "$log"
"""Per-GPU peak memory of every cell (torch allocator per rank, summed), NVML per GPU over each run,
and whether the tp>1 runs decoded the same tokens as the tp=1 run (cell by cell, sha256 of the tokens)."""
import json, sqlite3, sys

con = sqlite3.connect(sys.argv[1])
gib = lambda b: "-" if b is None else f"{b / 2**30:.2f}"
runs = con.execute("select id, label, device, status, json_extract(config, '$.tp'), runtime from run order by created_at").fetchall()
digests = {}
for rid, label, device, status, tp, runtime in runs:
    rt = json.loads(runtime or "{}")
    print(f"\n== {label}  [{device}]  {status}  load {rt.get('load_s') or 0:.1f} s  weights {gib(rt.get('weight_bytes'))} GiB")
    print(f"{'batch':>5} {'in':>5} {'out':>4} {'status':>7} {'tok/s':>9}  {'peak GiB (sum)':>14}  per rank GiB        NVML GiB (all GPUs)")
    for b, i, o, st, tps, gpu, rss, nvml, m in con.execute(
        "select batch, input_len, output_len, status, tokens_per_s, peak_gpu_bytes, peak_rss_bytes, peak_nvml_bytes, metrics "
        "from cell where run_id=? order by idx", (rid,)):
        m = json.loads(m or "{}")
        ranks = (m.get("tp") or {}).get("peak_bytes_per_rank")
        per = " ".join(gib(x) for x in ranks) if ranks else gib(gpu if gpu is not None else rss)
        print(f"{b:>5} {i:>5} {o:>4} {st:>7} {tps or 0:>9.1f}  {gib(gpu if gpu is not None else rss):>14}  {per:<18}  {gib(nvml)}")
        if m.get("tokens_sha256"):
            digests.setdefault((b, i, o), {})[int(tp or 1)] = m["tokens_sha256"]
    peaks = {}
    for (gpus,) in con.execute("select gpus from telemetry where run_id=?", (rid,)):
        for g in json.loads(gpus or "[]"):
            if g.get("mem_used") is not None:
                peaks[g["index"]] = max(peaks.get(g["index"], 0), g["mem_used"])
    if peaks:
        print("NVML peak memory used per GPU over the run: " + ", ".join(f"GPU{k} {gib(v)} GiB" for k, v in sorted(peaks.items())))
same = [all(d == by_tp.get(1) for d in by_tp.values()) for by_tp in digests.values() if 1 in by_tp and len(by_tp) > 1]
print(f"\ngreedy tokens identical to tp=1: {sum(same)} of {len(same)} cells")
EOF
$PY -m tui.cli export --format md -o "$OUT/tp.md" --db "$OUT/tp.db" $($PY -c "
import sqlite3, sys; print(' '.join(r[0] for r in sqlite3.connect(sys.argv[1]).execute('select id from run order by created_at')))" "$OUT/tp.db") \
  2>&1 | tee -a "$log"
ls -la "$OUT"
