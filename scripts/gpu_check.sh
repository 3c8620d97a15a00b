#!/usr/bin/env bash
# The prepared GPU check: within 8 minutes on one H100 it
#   1. runs every notebook under notebooks/ at PRESET=smoke on CUDA (papermill; figures to
#      $OUT/figs), each with a time limit, and
#   2. runs `python -m benchmarks --profile gpu`: every group of rows on PreResNet-32 at B = 128
#      and 1024, and the epoch time of PreResNet-32 (GN and BN) over 50k images (target <= 3 s).
# Data: CIFAR10_PATH (or the decoded cache data/cifar10.pt); the synthetic stand-in otherwise.
# Output: the table on stdout; under $OUT (a temporary folder if unset): bench-gpu.md,
#   bench-gpu.json, notebooks/*.ipynb, figs/, notebooks.tsv. Runs go to a scratch run store
#   (PAPERLIB_STORE is pointed at a temporary folder), never to data/runs.
#
# Usage:  scripts/gpu_check.sh [--device cuda|cpu] [--quick] [--compile]
#   --device cpu --quick   dry run on a CPU machine (seconds; checks the script, not the speed)
#   --compile              also time a torch.compile epoch (adds about a minute per net)
# Environment: PYTHON (default .venv/bin/python, else python3), NB_TIMEOUT (s per notebook,
#   default 120), NB_BUDGET (s for all notebooks, default 180), BENCH_TIMEOUT (s, default 270).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

DEVICE=cuda
BENCH_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="${2:?--device needs cuda or cpu}"; shift 2 ;;
        --quick) BENCH_ARGS+=(--quick); shift ;;
        --compile) BENCH_ARGS+=(--compile); shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu" >&2; exit 2 ;; esac

PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
OUT_DIR="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT_DIR/figs" "$OUT_DIR/notebooks"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONHASHSEED=0
# A scratch results store: the notebooks' runs must not land in the repository's run store
# (the decoded data sets stay where they are, so nothing is decoded twice).
SCRATCH="$(mktemp -d -t gpu_check_store.XXXXXX)"
export PAPERLIB_STORE="$SCRATCH"
NB_TIMEOUT="${NB_TIMEOUT:-120}" NB_BUDGET="${NB_BUDGET:-180}" BENCH_TIMEOUT="${BENCH_TIMEOUT:-270}"
START=$SECONDS
STATUS=0

if [ "$DEVICE" = cpu ]; then
    export CUDA_VISIBLE_DEVICES=""  # notebooks use device "auto": keep them off any GPU
else
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device visible to $PY; for a dry run use --device cpu --quick" >&2
        exit 1
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader
fi
echo "gpu_check: device=$DEVICE python=$PY out=$OUT_DIR store=$SCRATCH" \
    "CIFAR10_PATH=${CIFAR10_PATH:-unset}"

# --- 1. smoke notebooks ----------------------------------------------------------------------
shopt -s nullglob
NOTEBOOKS=(notebooks/*.ipynb)
printf 'notebook\tstatus\tseconds\n' > "$OUT_DIR/notebooks.tsv"
if [ ${#NOTEBOOKS[@]} -eq 0 ]; then
    echo "gpu_check: no notebooks under notebooks/ (nothing to run)"
fi
for nb in "${NOTEBOOKS[@]}"; do
    name="$(basename "$nb")"
    left=$((NB_BUDGET - (SECONDS - START)))
    if [ "$left" -le 10 ]; then
        printf '%s\tskipped (notebook budget %ss spent)\t0\n' "$name" "$NB_BUDGET" \
            | tee -a "$OUT_DIR/notebooks.tsv"
        continue
    fi
    limit=$((left < NB_TIMEOUT ? left : NB_TIMEOUT))
    t0=$SECONDS
    if timeout "$limit" "$PY" -m papermill "$nb" "$OUT_DIR/notebooks/$name" --cwd notebooks \
        -p PRESET smoke -p FIG_DIR "$OUT_DIR/figs" --no-progress-bar \
        > "$OUT_DIR/notebooks/$name.log" 2>&1; then
        result=ok
    else
        result="failed (rc $?, see notebooks/$name.log)"
        STATUS=1
    fi
    printf '%s\t%s\t%s\n' "$name" "$result" "$((SECONDS - t0))" | tee -a "$OUT_DIR/notebooks.tsv"
done

# --- 2. the benchmark and the epoch time -------------------------------------------------------
timeout "$BENCH_TIMEOUT" "$PY" -m benchmarks --device "$DEVICE" --profile gpu \
    "${BENCH_ARGS[@]}" --out "$OUT_DIR/bench-gpu.md" --section gpu \
    --json "$OUT_DIR/bench-gpu.json" \
    --note "scripts/gpu_check.sh, notebooks: $(tail -n +2 "$OUT_DIR/notebooks.tsv" \
        | awk -F'\t' '{printf "%s %s (%ss); ", $1, $2, $3}')"
rc=$?
if [ $rc -ne 0 ]; then
    STATUS=1
    echo "gpu_check: bench exited with $rc (124: over BENCH_TIMEOUT=${BENCH_TIMEOUT}s;" \
        "the groups finished so far follow)" >&2
    [ -f "$OUT_DIR/bench-gpu.md" ] && cat "$OUT_DIR/bench-gpu.md"
fi
echo "gpu_check: $(find "$SCRATCH" -mindepth 2 -maxdepth 2 -path '*/runs/*' | wc -l) runs in the" \
    "scratch store $SCRATCH (discarded)"
rm -rf "$SCRATCH"
echo "gpu_check: done in $((SECONDS - START)) s; results in $OUT_DIR"
exit $STATUS
