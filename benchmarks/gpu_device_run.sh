#!/usr/bin/env bash
# The GPU-machine calls behind docs/results/ (run from the repo root; OUT = a folder for the results).
#   part 1: environment, the roofline benchmark, the `gpu` integration tests
#   part 2: seed 001's study (benchmarks/gpu_study.py) into one database
#   hydragen: seed 003 (issue 8 part 8): hydragen numerics check on the device, then a trimmed study
#             (benchmarks/hydragen_study.py) sized for one 10-minute call, microbenchmark, report.
#             HYD_EXTRA appends run options (later ones win), e.g. a CPU dry run of the same command:
#             NO_WHEELS=1 DEVICE=cpu HYD_EXTRA="--device cpu --precision fp32 --opt layers=1 --batch 2
#             --shared-len 16,32 --output-len 2 --mb-suffix 0,8" OUT=/tmp/dry bash benchmarks/gpu_device_run.sh hydragen
#   hydragen-agree: `bench --json` and the runner's interleaved study of the same cells, then `agree` (per-cell
#             hydragen / noattention ratios within 5%) and `compare` (with 95% intervals); CPU dry run:
#             NO_WHEELS=1 DEVICE=cpu BENCH_EXTRA="--model tiny --precision fp32 --batch 2 --shared-len 32 --suffix-len 8
#             --output-len 4" HYD_EXTRA="--model tiny --device cpu --precision fp32 --batch 2 --shared-len 32
#             --suffix-len 8 --output-len 4" OUT=/tmp/agree bash benchmarks/gpu_device_run.sh hydragen-agree
#   hydragen-quick: the fast check of hydragen against the bound (about 5 minutes): numerics check, then
#             `hydragen_study.py bench` (one model load; noattention, hydragen, hydragen without CUDA graphs,
#             interleaved) and the runner's study, both at N = 128,256 x P = 4096; BENCH_EXTRA / HYD_EXTRA
#             append options to each.
#   llama-bench: issue 15 on a second CPU, the GPU host's: benchmarks/llamacpp_vs_llama_bench.py (codebench's CLI
#             against llama-bench and llama-batched-bench, LB_ROUNDS rounds, LB_EXTRA appended). The image has no
#             llama.cpp: .whl/ then also holds a cp312 llama-cpp-python 0.3.36 wheel and gguf 0.19.0 built on the dev
#             VM, and .devtools/ (carried) the tools built there from the same vendored source, copied to the path their
#             RUNPATH names. Both builds are the dev VM's (AVX2), so both sides run the same kernels.
#   memory: issue 19's evidence: seed 001's attention grid (eager vs sdpa-flash, batch 2,4,8 x input 4096-16384),
#             sequential, then the memory model's predicted peaks and OOMs against the measured ones
#             (benchmarks/memory_study.py); MEM_EXTRA appends `run` options (e.g. --skip-predicted-oom).
# Light dependencies the GPU image lacks travel as wheels in .whl/ (see .library/device README recipe).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false CODEBENCH_CACHE=${CODEBENCH_CACHE:-/tmp/cbcache}
OUT=${OUT:?set OUT to a results folder}
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
env_info() {
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  # bitsandbytes travels only for the calls that need it: a missing one is printed, not fatal
  python3 -c "import sys, torch, transformers, importlib.util as u; b = u.find_spec('bitsandbytes'); print('python', sys.version.split()[0], '| torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| bitsandbytes', __import__('bitsandbytes').__version__ if b else 'not installed')"
}
case "${1:-}" in
  1)
    env_info 2>&1 | tee "$OUT/part1.log"
    timeout 300 python3 benchmarks/gpu_roofline.py --db "$OUT/roofline.db" --json "$OUT/roofline.json" --repeats 2 2>&1 | tee -a "$OUT/part1.log"
    timeout 220 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rA 2>&1 | tail -60 | tee -a "$OUT/part1.log"
    ;;
  2)
    env_info 2>&1 | tee "$OUT/part2.log"
    python3 -m engines.measure.probe --device cuda 2>&1 | tail -1 | tee -a "$OUT/part2.log"
    python3 benchmarks/gpu_study.py run --db "$OUT/study.db" --timeouts "${TIMEOUTS:-230,130,190}" 2>&1 | tee -a "$OUT/part2.log"
    ;;
  hydragen)
    log="$OUT/hydragen.log"
    env_info 2>&1 | tee "$log"
    timeout 90 python3 benchmarks/hydragen_study.py check --device "${DEVICE:-cuda}" 2>&1 | tee "$OUT/hydragen_check.log" | tee -a "$log"
    # shellcheck disable=SC2086  # HYD_EXTRA is a list of options
    python3 benchmarks/hydragen_study.py run --db "$OUT/hydragen.db" --out "$OUT" --batch 32,128,256 \
      --shared-len 1024,4096,16384 --suffix-len 32 --output-len 128 --warmup 1 --repeats 2 \
      --engines hf-generate,hydragen,noattention --cell-timeout 75 --study-timeout "${STUDY_TIMEOUT:-380}" \
      --mb-suffix 0:513:128 --mb-iters 10 --mb-timeout 75 ${HYD_EXTRA:-} 2>&1 | tee -a "$log"
    python3 benchmarks/hydragen_study.py report --db "$OUT/hydragen.db" -o "$OUT/hydragen.md" 2>&1 | tee -a "$log"
    grep -E "^(ok  |FAIL)|hydragen check" "$OUT/hydragen_check.log"
    ;;
  hydragen-quick)
    log="$OUT/hydragen.log"
    env_info 2>&1 | tee "$log"
    timeout 100 python3 benchmarks/hydragen_study.py check --device "${DEVICE:-cuda}" 2>&1 | tee "$OUT/hydragen_check.log" | tee -a "$log"
    # shellcheck disable=SC2086  # BENCH_EXTRA / HYD_EXTRA are lists of options
    timeout 200 python3 benchmarks/hydragen_study.py bench --device "${DEVICE:-cuda}" --batch 128,256 --shared-len 4096 \
      --variants noattention,hydragen,hydragen-eager --repeats 3 ${BENCH_EXTRA:-} 2>&1 | tee -a "$log"
    # shellcheck disable=SC2086
    python3 benchmarks/hydragen_study.py run --db "$OUT/hydragen.db" --out "$OUT" --batch 128,256 --shared-len 4096 \
      --suffix-len 32 --output-len 128 --warmup 1 --repeats 2 --engines hydragen,noattention --cell-timeout 75 \
      --study-timeout "${STUDY_TIMEOUT:-200}" --no-microbench ${HYD_EXTRA:-} 2>&1 | tee -a "$log"
    python3 benchmarks/hydragen_study.py report --db "$OUT/hydragen.db" -o "$OUT/hydragen.md" 2>&1 | tee -a "$log"
    grep -E "^(ok  |FAIL)|hydragen check" "$OUT/hydragen_check.log"
    ;;
  hydragen-agree)
    # issue 15: the runner's interleaved study against `bench` on the same cells, hydragen / noattention within 5%.
    log="$OUT/agree.log"
    env_info 2>&1 | tee "$log"
    # shellcheck disable=SC2086  # BENCH_EXTRA / HYD_EXTRA are lists of options
    timeout 200 python3 benchmarks/hydragen_study.py bench --device "${DEVICE:-cuda}" --batch 128,256 --shared-len 4096 \
      --suffix-len 32 --output-len 128 --variants noattention,hydragen --repeats "${AGREE_REPEATS:-4}" --json "$OUT/bench.json" \
      ${BENCH_EXTRA:-} 2>&1 | tee -a "$log"
    # shellcheck disable=SC2086
    python3 benchmarks/hydragen_study.py run --db "$OUT/agree.db" --out "$OUT" --batch 128,256 --shared-len 4096 \
      --suffix-len 32 --output-len 128 --warmup 1 --repeats "${AGREE_REPEATS:-4}" --engines hydragen,noattention --cell-timeout 75 \
      --study-timeout "${STUDY_TIMEOUT:-230}" --no-microbench ${HYD_EXTRA:-} 2>&1 | tee -a "$log"
    python3 benchmarks/hydragen_study.py agree --bench "$OUT/bench.json" --db "$OUT/agree.db" 2>&1 | tee -a "$log"
    python3 -m tui.cli --db "$OUT/agree.db" compare last~1 last --baseline last --no-chart 2>&1 | tee -a "$log"
    ;;
  memory)
    log="$OUT/memory.log"
    env_info 2>&1 | tee "$log"
    # shellcheck disable=SC2086  # MEM_EXTRA is a list of options
    python3 benchmarks/memory_study.py run --db "$OUT/memory.db" --timeout "${STUDY_TIMEOUT:-480}" -- ${MEM_EXTRA:-} 2>&1 | tee -a "$log"
    python3 benchmarks/memory_study.py report --db "$OUT/memory.db" -o "$OUT/memory.md" 2>&1 | tee -a "$log"
    ;;
  llama-bench)
    log="$OUT/llama-bench.log"
    env_info 2>&1 | tee "$log"
    lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|L3" | tee -a "$log"
    tools=/root/.cache/codebench-tui/llama-tools/0.3.36
    # the tools, and the C decode loop built on the dev VM (its cache name hashes the source, `cc` and the machine)
    mkdir -p "$tools" /root/.cache/codebench-tui/llama-steploop && cp -a .devtools/build .devtools/tools.json "$tools"/ \
      && cp .devtools/steploop/*.so /root/.cache/codebench-tui/llama-steploop/ || exit 1
    ldd "$tools/build/bin/llama-bench" | grep "not found" | tee -a "$log"
    # shellcheck disable=SC2086  # LB_EXTRA is a list of options
    # libgomp travels with the tools: the wheel's libraries and the tools then share the dev VM's OpenMP runtime
    LD_LIBRARY_PATH="$tools/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" CODEBENCH_CACHE=/root/.cache/codebench-tui timeout "${LB_TIMEOUT:-540}" python3 benchmarks/llamacpp_vs_llama_bench.py \
      --rounds "${LB_ROUNDS:-10}" ${LB_EXTRA:-} 2>&1 | tee -a "$log"
    ;;
  verdict)
    # issue 21 on a GPU: starcoder2-3b:random at three precisions with agreement (--check) and NVML energy, then
    # the verdict under several objectives and constraints, its Markdown, and the Pareto view per GPU
    log="$OUT/verdict.log"
    env_info 2>&1 | tee "$log"
    timeout "${STUDY_TIMEOUT:-420}" python3 -m tui.cli --db "$OUT/verdict.db" run --model starcoder2-3b:random \
      --engine hf-generate --precision fp32,bf16,fp16 --attention sdpa --batch 1,8,32 --input-len 512,2048 \
      --output-len 32 --warmup 1 --iters 1 --repeats 3 --check --quiet 2>&1 | tail -5 | tee -a "$log"
    for args in "--at batch=8,input=2048" "--at batch=8,input=2048 --min-quality agreement>=0.99" \
        "--objective joules_per_token --at batch=32,input=2048" "--objective tokens_per_s_per_gib" \
        "--at batch=64,input=2048 --max-mem 40GiB"; do
      echo "== verdict $args" | tee -a "$log"
      # shellcheck disable=SC2086  # the constraints are a list of options
      COLUMNS=160 python3 -m tui.cli --db "$OUT/verdict.db" verdict $args 2>&1 | tee -a "$log"
    done
    python3 -m tui.cli --db "$OUT/verdict.db" verdict --at batch=8,input=2048 --min-quality "agreement>=0.99" \
      --format md -o "$OUT/verdict.md" 2>&1 | tee -a "$log"
    COLUMNS=160 python3 -m tui.cli --db "$OUT/verdict.db" compare last~2 last~1 last --pareto throughput --no-chart 2>&1 \
      | tail -20 | tee -a "$log"
    ;;
  *) echo "usage: OUT=dir $0 1|2|hydragen|hydragen-quick|hydragen-agree|memory|llama-bench|verdict" >&2; exit 2 ;;
esac
