#!/usr/bin/env bash
# One prepared GPU check (issue 10 item 6), for a machine with CUDA: prints the GPU model,
# runs the CUDA tests (tests/test_cuda.py and the device tests of tests/test_workers.py)
# and bench/throughput.py on the GPU, then the ratios. Run from anywhere:
#
#     bash bench/gpu_check.sh                  # PYTHON=/path/to/python to pick the interpreter
#     QUICK=1 bash bench/gpu_check.sh          # 10k samples per epoch, 3 repeats
#
# Writes bench/results/throughput_gpu.json (or $OUT/throughput_gpu.json when $OUT is set).
# Exit code: 0 all passed, 1 a test or the benchmark failed, 2 no CUDA device here.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
RESULTS=${OUT:-bench/results}
mkdir -p "$RESULTS"

"$PY" - <<'PYEOF' || exit 2
import sys
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
if not torch.cuda.is_available():
    print("gpu_check: no CUDA device on this machine; nothing to check", file=sys.stderr)
    sys.exit(2)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "== CUDA tests"
"$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_workers.py -k "cuda or device or gpu"
tests_rc=$?

echo "== bench/throughput.py on cuda"
"$PY" bench/throughput.py --device cuda ${QUICK:+--quick} --json "$RESULTS/throughput_gpu.json"
bench_rc=$?

if [ "$bench_rc" -eq 0 ]; then
  "$PY" - "$RESULTS/throughput_gpu.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"GPU {r['gpu']} ({r['device']}), {r['samples_per_epoch']} samples/epoch on {r['data']}, {r['repeats']} repeats")
for t, res in r["by_threads"].items():
    ratios = ", ".join(f"{k} {res[k + '_ratio']:.3f} (target {r['targets'][k + '_ratio']})"
                       for k in ("weighted_sum_itp", "smgd_itp", "dataloader_itp"))
    print(f"threads {t}: plain {res['plain_samples_per_s']:.0f} samples/s; {ratios}")
PYEOF
fi
echo "gpu_check: tests exit $tests_rc, benchmark exit $bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
