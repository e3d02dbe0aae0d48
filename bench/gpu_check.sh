#!/usr/bin/env bash
# One command for a GPU machine (the `device` tool's, or any): build against the machine's own torch,
# run the CUDA tests and compute-sanitizer, a short training run on each backend, then
# bench/compare.py with the time that is left; a summary table is printed last.
#   bash bench/gpu_check.sh [OUT]      # from anywhere; OUT defaults to $OUT, else ./gpu-out
# Everything stays inside BUDGET seconds (default 420: well inside 8 minutes): every step runs under
# `timeout`, capped so that the steps after it keep their share, and a step that no longer fits is
# skipped. Each step's output is in OUT/<step>.log; OUT/steps.tsv lists step, status, seconds; the
# benchmark results are OUT/results/<date>-<card>-gpu-check.{json,md} (copy them to bench/results/).
# The script goes on after a failed step and exits 1 at the end if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-${OUT:-$PWD/gpu-out}}" && cd "${1:-${OUT:-$PWD/gpu-out}}" && pwd)
BUDGET=${BUDGET:-420}
T0=$(date +%s)
failed=()
printf 'step\tstatus\tseconds\n' > "$OUT/steps.tsv"
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
run() {  # run NAME CAP RESERVE COMMAND...: at most CAP seconds, never into the RESERVE kept for later
  local name=$1 cap=$2 reserve=$3; shift 3
  local t=$(( $(left) - reserve )); (( t > cap )) && t=$cap
  if (( t < 15 )); then
    echo "=== $name: skipped, $(left) s left"; printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"; return
  fi
  echo "=== $name ($(date -u +%H:%M:%S), limit $t s)"
  local start=$(date +%s) rc status
  timeout --kill-after=10 "$t" "$@" > "$OUT/$name.log" 2>&1; rc=$?
  case $rc in 0) status=ok ;; 124|137) status="timeout (${t} s)"; failed+=("$name") ;; *) status="FAILED ($rc)"; failed+=("$name") ;; esac
  echo "    $status"; tail -n 4 "$OUT/$name.log" | sed 's/^/    /'
  printf '%s\t%s\t%s\n' "$name" "$status" $(( $(date +%s) - start )) >> "$OUT/steps.tsv"
}
IN_OUT=(env -C "$OUT")  # run outside the source tree, so that Python imports the installed package
if command -v pytest > /dev/null; then PYTEST=(pytest); else PYTEST=(python -P -m pytest); fi

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi 2>&1
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  python -c "import importlib.util as u; print('importable:', {m: bool(u.find_spec(m)) for m in ('numpy', 'tqdm', 'matplotlib', 'pytest')})"
  nvcc --version 2>&1 | tail -1
} > "$OUT/machine.txt" 2>&1
head -n 20 "$OUT/machine.txt"
# Machine code for this card only: half the compile time of the default sm_80 + sm_90 build.
arch=$(python -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')" 2>/dev/null)
export PYALEXNET_CUDA_ARCHS=${PYALEXNET_CUDA_ARCHS:-${arch:-80-real;90}}
# Each step: at most CAP seconds, and never into RESERVE, what the steps after it need at the least.
#   name             cap reserve  command
run build            240 200  env PYALEXNET_CUDA=ON pip install --no-build-isolation --no-deps -v .
run info              30 190  "${IN_OUT[@]}" python -c "import pyalexnet; print(pyalexnet.build_info())"
# Every CUDA test, even after a failure (one GPU call should bring back all it can), and a test
# module that cannot be imported (say, for want of a package) must not stop the others.
run cuda_tests       120 150  "${PYTEST[@]}" -q -m cuda --continue-on-collection-errors \
  --junitxml="$OUT/cuda_tests.xml" tests
for backend in custom cudnn; do  # bf16 autocast and channels_last, as one would train on a GPU
  run "train_$backend" 45 100 "${IN_OUT[@]}" python -m pyalexnet.train --backend "$backend" --epochs 2 \
    --synthetic-size 4000 --bf16 --channels-last --no-progress --log "$OUT/train-$backend.jsonl"
done
if command -v compute-sanitizer > /dev/null; then  # a small case of every kernel, every dtype
  run sanitizer_loss 60 150 compute-sanitizer --tool memcheck --error-exitcode 1 \
    "${PYTEST[@]}" -q -m cuda -k "not bigmem and not trap" tests/test_softmax_cross_entropy_cuda.py
  for tool in memcheck racecheck; do
    run "sanitizer_conv_$tool" 75 150 compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "${PYTEST[@]}" -q -m cuda -k small_case_every_kernel tests/test_conv_relu_maxpool_cuda.py
  done
fi
# compare.py gets what is left (its --time-limit; 45 s more for start-up and the limits it measures).
limit=$(( $(left) - 50 )); (( limit > 240 )) && limit=240
plot=(); python -c "import matplotlib" 2> /dev/null && plot=(--plot "$OUT/speedups.png")
run compare $(( limit + 45 )) 0 python bench/compare.py --gpu-check --time-limit "$limit" \
  --save "$OUT/results" --json "$OUT/compare.json" "${plot[@]}"
python bench/gpu_summary.py "$OUT" 2>&1 || cat "$OUT/steps.tsv"
echo "total $(( $(date +%s) - T0 )) s of $BUDGET"
if [ ${#failed[@]} -gt 0 ]; then echo "failed or timed-out steps: ${failed[*]}"; exit 1; fi
echo "all steps passed; results in $OUT"
