#!/usr/bin/env bash
# One command for a GPU machine (the `device` tool's, or any): build against the machine's own torch,
# run the CUDA tests with compute-sanitizer beside them, a short training run, then bench/compare.py
# with the time that is left; a summary table is printed last.
#   bash bench/gpu_check.sh [OUT]               # from anywhere; OUT defaults to $OUT, else ./gpu-out
#   bash bench/gpu_check.sh --rehearsal [OUT]   # the same plumbing on a machine without a GPU (CI)
# It stays inside BUDGET seconds (default 540, for one 600-second command): each step runs under
# `timeout` (SIGINT first, so pytest still writes its junit XML), never into the time planned for the
# steps after it (PLAN below). Everything it writes goes to a work folder; after every step it packs
# that into OUT as at most four files, for a machine that returns at most 8 files of 16 MiB:
#   gpu-check.tar.gz  every log, steps.tsv, machine.txt, the junit XML, compare.py's results
#   summary.md        the summary table: steps, tests, sanitizer verdicts, speedups
#   gpu-check.json    the same as data, every test's outcome and compare.py's rows
#   speedups.png      the plot (where matplotlib is installed)
# Commit summary.md and gpu-check.json as bench/results/<date>-<card>-gpu-check.{md,json}.
# The script goes on after a failed step and exits 1 at the end if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
REHEARSAL=0
if [ "${1:-}" = "--rehearsal" ]; then REHEARSAL=1; shift; fi
OUT=$(mkdir -p "${1:-${OUT:-$PWD/gpu-out}}" && cd "${1:-${OUT:-$PWD/gpu-out}}" && pwd)
# The rehearsal runs on two CPU cores (CI's machine), so its time plan is stretched SCALE times.
SCALE=${SCALE:-$(( REHEARSAL ? 4 : 1 ))}
BUDGET=${BUDGET:-$(( 540 * SCALE ))}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
T0=$(date +%s)

# Seconds planned per step, in order, with what each number rests on. A step may use the time that
# earlier steps left unused, never the plan of a later one; compare gets all that is left.
STEPS=(probe build info checks train compare)
declare -A PLAN=(
  [probe]=15     # rehearsal: 4 s (three Python start-ups importing torch)
  [build]=100    # one architecture on all cores: the rehearsal took 57 s on 2 cores, 28 s of it the conv
                 # kernels' .cu file, which bounds a build whose 7 files all compile at once
  [info]=10      # rehearsal: 3 s (one import of pyalexnet)
  [checks]=150   # the CUDA tests of --quick (~890, pytest -n 8; their float64 references ~20 CPU-s in
                 # all on 2 cores here) beside compute-sanitizer: memcheck, then racecheck, on ~50 small tests
  [train]=30     # 2 epochs of 4,000 images in bf16 on an H100-class GPU: ~10 s, plus start-up (rehearsal: 6 s)
  [compare]=235  # the rest: ~25 s start-up and limits, then rows, the bars' rows first (rehearsal: 12 s)
)
plan_total=0; for s in "${STEPS[@]}"; do PLAN[$s]=$(( PLAN[$s] * SCALE )); plan_total=$(( plan_total + PLAN[$s] )); done
if (( plan_total > BUDGET )); then echo "the step plan ($plan_total s) exceeds BUDGET=$BUDGET"; exit 2; fi

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
after() {  # seconds planned for the steps after $1
  local s seen=0 sum=0
  for s in "${STEPS[@]}"; do (( seen )) && sum=$(( sum + PLAN[$s] )); [ "$s" = "$1" ] && seen=1; done
  echo $sum
}
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$WORK/steps.tsv"; }
run() {  # run NAME LIMIT COMMAND...: at most LIMIT seconds; output in NAME.log
  local name=$1 t=$2; shift 2
  if (( t < 5 )); then echo "=== $name: skipped, no time left"; record "$name" skipped 0 "no time left"; return; fi
  echo "=== $name ($(date -u +%H:%M:%S), limit $t s)"
  local start=$(date +%s) rc status
  timeout -s INT --kill-after=15 "$t" "$@" > "$WORK/$name.log" 2>&1; rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  echo "    $status ($rc), $(( $(date +%s) - start )) s"; tail -n 3 "$WORK/$name.log" | cut -c1-200 | sed 's/^/    /'
  record "$name" "$status" $(( $(date +%s) - start )) "exit $rc, limit $t s"
}
limit_of() { local t=$(( $(left) - $(after "$1") )); echo $(( t > 0 ? t : 0 )); }
pack() {  # everything so far into OUT: what comes back if the command is stopped after this
  tar -czf "$OUT/gpu-check.tar.gz.tmp" -C "$WORK" . && mv "$OUT/gpu-check.tar.gz.tmp" "$OUT/gpu-check.tar.gz"
  "$PY" bench/gpu_summary.py "$WORK" --out "$OUT" > "$WORK/summary.txt" 2>&1 || cat "$WORK/summary.txt"
  [ -f "$WORK/speedups.png" ] && cp "$WORK/speedups.png" "$OUT/"
  return 0
}

# --- the machine -------------------------------------------------------------------------------
PY=$(command -v python3 || command -v python)
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
command -v nvcc > /dev/null || export PATH="/usr/local/cuda/bin:$PATH"
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
printf 'step\tstatus\tseconds\tnote\n' > "$WORK/steps.tsv"
probe() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "mode: $([ $REHEARSAL = 1 ] && echo rehearsal || echo gpu)"
  echo "python: $PY ($("$PY" -V 2>&1))"
  echo "python headers: $("$PY" -c "import os, sysconfig; h = os.path.join(sysconfig.get_paths()['include'], 'Python.h'); print(h if os.path.exists(h) else 'MISSING ' + h)")"
  echo "nvcc: $(command -v nvcc > /dev/null && nvcc --version | tail -1 || echo 'not found')"
  echo "compute-sanitizer: $(command -v compute-sanitizer > /dev/null && compute-sanitizer --version | tail -1 || echo 'not found')"
  echo "card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'none')"
  "$PY" -c "import torch; c = torch.cuda.is_available(); print('torch:', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), '| device', torch.cuda.get_device_name() if c else 'none', '| capability', ''.join(map(str, torch.cuda.get_device_capability())) if c else '-')"
  "$PY" -c "import importlib.util as u; print('importable:', ', '.join(m + ('' if u.find_spec(m) else ' MISSING') for m in ('numpy', 'tqdm', 'matplotlib', 'pytest', 'xdist', 'expecttest', 'torchvision', 'scikit_build_core')))"
  echo "cores: $(nproc)"
}
export -f probe; export PY REHEARSAL  # for the bash that `timeout` runs it in
run probe "$(limit_of probe)" bash -c probe
cp "$WORK/probe.log" "$WORK/machine.txt"; sed 's/^/  /' "$WORK/machine.txt"
pack

# --- build: this card's architecture only, all cores ---------------------------------------------
arch=$(sed -n 's/.*| capability \([0-9][0-9]*\)$/\1/p' "$WORK/machine.txt")  # the probe's, e.g. 90
export PYALEXNET_CUDA_ARCHS=${PYALEXNET_CUDA_ARCHS:-${arch:-90}}  # the rehearsal builds for an H100/H200
run build "$(limit_of build)" env PYALEXNET_CUDA=ON "$PY" -m pip install --no-build-isolation --no-deps -v \
  -C build-dir=build/gpu-check .
run info "$(limit_of info)" "$PY" -c "import pyalexnet; print(pyalexnet.build_info())"
pack

# --- checks: the CUDA tests beside compute-sanitizer ---------------------------------------------
checks_end=$(( $(date +%s) + $(limit_of checks) ))
until_checks_end() { local t=$(( checks_end - $(date +%s) )); echo $(( t > 0 ? t : 0 )); }
workers=(); "$PY" -c "import xdist" 2> /dev/null && workers=(-n "$(( $(nproc) > 16 ? 8 : ($(nproc) + 1) / 2 ))")
# Every CUDA test of the quick set, even after a failure; a module that cannot be imported must not
# stop the others. Two CPU threads a worker for the float64 references.
OMP_NUM_THREADS=2 run cuda_tests "$(until_checks_end)" "$PY" -m pytest -q -m cuda --quick "${workers[@]}" \
  --continue-on-collection-errors -p no:cacheprovider --junitxml="$WORK/cuda_tests.xml" tests &
SMALL="small_case_every_kernel or (agrees_with_cpu and float32)"  # every kernel, forward and backward
sanitize() {
  if ! command -v compute-sanitizer > /dev/null; then
    record "sanitizer_$1" skipped 0 "no compute-sanitizer"; echo "=== sanitizer_$1: skipped, no compute-sanitizer"; return
  fi
  run "sanitizer_$1" "$2" compute-sanitizer --tool "$1" --error-exitcode 1 "$PY" -m pytest -q -p no:xdist \
    -p no:cacheprovider -m cuda -k "$SMALL" --junitxml="$WORK/sanitizer_$1.xml" \
    tests/test_conv_relu_maxpool_cuda.py tests/test_softmax_cross_entropy_cuda.py
}
( sanitize memcheck $(( $(until_checks_end) / 2 )); sanitize racecheck "$(until_checks_end)" ) &
wait
pack

# --- a short training run on our kernels (bf16 autocast, channels_last, as on a GPU) -------------
if (( REHEARSAL )); then size=(--synthetic-size 100 --epochs 1 --batch-size 50); else size=(--synthetic-size 4000 --epochs 2); fi
run train "$(limit_of train)" "$PY" -m pyalexnet.train --backend custom "${size[@]}" --channels-last \
  --no-progress --log "$WORK/train.jsonl"
pack

# --- compare.py with the time that is left (about 25 s of it for start-up and the limits) --------
limit=$(limit_of compare)
plot=(); "$PY" -c "import matplotlib" 2> /dev/null && plot=(--plot "$WORK/speedups.png")
run compare "$limit" "$PY" bench/compare.py --gpu-check --time-limit $(( limit > 60 ? limit - 25 : limit / 2 )) \
  --save "$WORK/results" --json "$WORK/compare.json" "${plot[@]}"
pack

cat "$WORK/summary.txt"
echo "total $(( $(date +%s) - T0 )) s of $BUDGET; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
failed=$(awk -F'\t' 'NR > 1 && ($2 == "failed" || $2 == "timeout") {print $1}' "$WORK/steps.tsv" | tr '\n' ' ')
rm -rf "$WORK"
if [ -n "$failed" ]; then echo "failed or timed-out steps: $failed"; exit 1; fi
echo "all steps passed"
