#!/usr/bin/env bash
# One command for a GPU machine (the `device` tool's, or any): build against the machine's own torch,
# run the CUDA tests, then the benchmarks; everything it measures goes under $OUT (default ./gpu-out).
#   bash bench/gpu_check.sh            # from the repository root
# Each step's output is kept in $OUT/<step>.log; the script goes on after a failed step and exits
# non-zero at the end if any step failed, so one call always brings back every result it could get.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
failed=()
run() {  # run NAME COMMAND...: logs to $OUT/NAME.log, records failure
  local name=$1; shift
  echo "=== $name ($(date -u +%H:%M:%S))"
  if "$@" > "$OUT/$name.log" 2>&1; then echo "    ok"; else echo "    FAILED (exit $?)"; failed+=("$name"); fi
  tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
}
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvcc --version 2>&1 | tail -1
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
run build env PYALEXNET_CUDA=ON pip install --no-build-isolation --no-deps -v .
run info bash -c 'cd /tmp && python -c "import pyalexnet; print(pyalexnet.build_info())"'
run cuda_tests python -m pytest -P -q -m cuda -x --junitxml="$OUT/cuda_tests.xml" tests
if command -v compute-sanitizer > /dev/null; then
  run sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 \
    python -m pytest -P -q -m cuda -k "not bigmem and not trap" tests/test_softmax_cross_entropy_cuda.py
  for tool in memcheck racecheck; do  # one small case of every conv kernel, every dtype
    run "sanitizer_conv_$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
      python -m pytest -P -q -m cuda -k small_case_every_kernel tests/test_conv_relu_maxpool_cuda.py
  done
fi
for dt in bfloat16 float32; do
  for v in cifar imagenet; do
    run "bench_conv_${v}_$dt" python bench/conv_relu_maxpool.py --variant "$v" --dtype "$dt" --batch 128 \
      --channels-last --rounds 1 --sets 2 --min-run-time 0.1 --json "$OUT/conv-$v-$dt.json"
  done
done
for dt in float32 bfloat16; do
  run "bench_loss_$dt" python bench/softmax_cross_entropy.py --dtype "$dt" \
    --shapes 128x10,1024x10,4096x10,128x1000,1024x1000,4096x1000,16384x32768,16384x131072 \
    --json "$OUT/loss-$dt.json"
done
if [ ${#failed[@]} -gt 0 ]; then echo "failed steps: ${failed[*]}"; exit 1; fi
echo "all steps passed; results in $OUT"
