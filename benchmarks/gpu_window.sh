#!/usr/bin/env bash
# One GPU window, most valuable figures first, in at most BUDGET_S seconds of wall time.
#
#   benchmarks/gpu_window.sh                 # on the GPU machine (DEVICE=cuda)
#   DEVICE=cpu BUDGET_S=300 benchmarks/gpu_window.sh   # the rehearsal: the same steps on the CPU,
#                                            # Triton interpreted, the suites' [cpu] shapes
#   PLAN=1 benchmarks/gpu_window.sh          # size every step with --dry-run (H100 spec peaks) and exit
#
# Steps, in priority order (each one's time is a share of the budget; what a step leaves
# unused goes to the next; a step past its share is stopped, and what it measured is kept):
#   1. the environment (`env --probe --json`), the GPU tests and the Triton kernel tests
#      compiled, then rel_err of every fused backend (benchmarks/gpu_window/accuracy.toml)
#   2. the attention core alone: our kernel beside FlashInfer / FlashMLA, gla and dsa, FP8 and
#      paged reads (kernels.toml), then the Triton launch configurations (configs.toml, one run each)
#   3. `sweep --suite gpu-baseline` (its 3 rounds) cold, then with --cuda-graph if time is left,
#      then the serving frontier (deepseek-v3.2 dims in 80 GiB, 6 variants, 5 contexts) with what time is left
#   4. one --profile of the Triton decode case (trace, breakdown, memory snapshot on CUDA)
#   5. the memory columns against each other (from the rows of 1-3; nothing more is run)
#
# Everything lands in OUT (default results/gpu_window/<UTC time>), rewritten after every
# step so a cut window keeps what it measured, in at most 8 files: summary.txt, window.log,
# env.json, pytest.txt, memory.csv, runs.tar.gz (every run directory and the profile).
# Wheels in WHEELS (default .whl/ at the repository root) are installed first, without the
# network: `pip install --no-index --no-deps --target`, put on PYTHONPATH after the source tree.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-540}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$ROOT/.whl}
OUT=${OUT:-$ROOT/results/gpu_window/$(date -u +%Y%m%dT%H%M%SZ)}
SUITES=$ROOT/benchmarks/gpu_window
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mlabench() { "$PY" -m mlabench "$@"; }
# The serving frontier's GPU plan (the CPU rehearsal takes its tiny defaults).
FRONTIER="--model deepseek-v3.2 --variant mha,mla-expanded,mla-latent,mla-absorbed,gla-absorbed,dsa --context 4096,8192,16384,32768,131072"

if [ "${PLAN:-0}" = 1 ]; then  # size the plan for the GPU, whatever this machine is
  for args in "--suite $SUITES/accuracy.toml" "--suite $SUITES/kernels.toml" \
              "--suite $SUITES/configs.toml --option num_stages=2" "--suite gpu-baseline" \
              "--suite gpu-baseline --cuda-graph" "--suite $SUITES/configs.toml --model deepseek-v2-lite"; do
    # shellcheck disable=SC2086
    mlabench sweep --device cuda --dry-run $args | head -1
  done
  mlabench frontier --device cuda --dry-run $FRONTIER | grep -m1 ' cases'
  exit 0
fi

WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-window.XXXXXX")}
START=$(date +%s)
mkdir -p "$OUT" "$WORK/runs"
LOG=$OUT/window.log
STEPS=$WORK/steps.tsv  # step, status, seconds: the summary's first table
: > "$STEPS"

export MLABENCH_GIT_COMMIT=${MLABENCH_GIT_COMMIT:-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)}
export COLUMNS=${COLUMNS:-120}
export PYTHONUNBUFFERED=1  # a step stopped at its share still leaves its output in the files
if [ "$DEVICE" = cpu ]; then
  export TRITON_INTERPRET=1  # the kernels run on the CPU through Triton's interpreter
fi

log() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# The step's share of the budget: deadline = START + (cumulative share) * BUDGET_S.
deadline() { "$PY" -c "print(int($START + $1 * $BUDGET_S))"; }
left() { echo $(($1 - $(date +%s))); }

# run_step NAME DEADLINE CMD...: the command under `timeout` until DEADLINE, its output in the log.
run_step() {
  local name=$1 until=$2; shift 2
  local secs t0 rc status
  secs=$(left "$until")
  if [ "$secs" -lt 10 ]; then
    log "$name: skipped (${secs}s left of its share)"
    printf '%s\tskipped\t0\n' "$name" >> "$STEPS"
    return 0
  fi
  log "$name: $* (up to ${secs}s)"
  t0=$(date +%s)
  timeout --signal=TERM --kill-after=15 "$secs" "$@" >> "$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=done ;;
    1) status="done, exit 1" ;;  # a run that found a problem (failed or inaccurate cases) still measured
    124|137|143) status="cut at its share" ;;
    *) status="failed, exit $rc" ;;
  esac
  log "$name: $status"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" >> "$STEPS"
  save
}

# Everything measured so far into OUT (a cut window keeps it): the run directories as one tarball.
save() {
  tar -czf "$OUT/runs.tar.gz.part" -C "$WORK" runs $( [ -d "$WORK/profile" ] && echo profile ) 2>>"$LOG" \
    && mv "$OUT/runs.tar.gz.part" "$OUT/runs.tar.gz"
  "$PY" "$ROOT/benchmarks/gpu_window_summary.py" "$WORK" "$OUT" "$DEVICE" > "$OUT/summary.txt" 2>>"$LOG"
}

run_sweep() {  # run_sweep STEP DEADLINE RUN_NAME ARGS...: one sweep, its run directory under WORK/runs
  local step=$1 until=$2 name=$3; shift 3
  run_step "$step" "$until" "$PY" -m mlabench sweep --device "$DEVICE" --no-report --out "$WORK/runs/$name" "$@"
}


log "gpu window on $DEVICE: budget ${BUDGET_S}s, out $OUT, work $WORK, commit $MLABENCH_GIT_COMMIT"

# --- 0. wheels carried beside the repository (FlashInfer, FlashMLA, plotly, pytest, ...) ------
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE=$WORK/site
  if "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl >> "$LOG" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$SITE"
    log "wheels: $(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ')"
  else
    log "wheels: pip install failed (see above); going on without them"
  fi
fi

# --- 1. environment, tests compiled, accuracy of every fused backend ---------------------------
D1=$(deadline 0.30)
run_step "1a env --probe" "$(deadline 0.06)" bash -c "$(printf '%q ' "$PY") -m mlabench env --probe --json > $(printf '%q' "$OUT/env.json")"
if "$PY" -c "import pytest" 2>/dev/null; then
  # The tests marked gpu, then the Triton kernel tests (compiled on a GPU, interpreted on the CPU).
  run_step "1b pytest gpu + kernels" "$(deadline 0.16)" bash -c "cd $(printf '%q' "$ROOT") && \
    { $(printf '%q ' "$PY") -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m gpu tests; \
      $(printf '%q ' "$PY") -m pytest -q -p no:cacheprovider tests/test_triton_mla_decode.py \
      tests/test_triton_gla.py tests/test_triton_sparse.py tests/test_kernel_compile.py; } \
    > $(printf '%q' "$OUT/pytest.txt") 2>&1"
else
  log "1b pytest: not installed here (carry a pytest wheel in $WHEELS)"
  printf '1b pytest (not installed)\tskipped\t0\n' >> "$STEPS"
fi
run_sweep "1c accuracy" "$D1" accuracy --suite "$SUITES/accuracy.toml" --no-probe

# --- 2. the core alone: kernels side by side, then our kernel's launch configurations ----------
D2=$(deadline 0.62)
run_sweep "2a kernels" "$(deadline 0.42)" kernels --suite "$SUITES/kernels.toml" --no-probe
for cfg in "num_stages=2 num_warps=4" "num_stages=2 num_warps=8" "num_stages=3 num_warps=4" \
           "num_stages=3 num_warps=8" "block_h=16" "block_h=32" "block_h=64"; do
  opts=()
  for o in $cfg; do opts+=(--option "$o"); done
  run_sweep "2b triton $cfg" "$D2" "config-${cfg// /-}" --suite "$SUITES/configs.toml" --no-probe "${opts[@]}"
done

# --- 3. the baseline: cold, then in CUDA graphs ----------------------------------------------
run_sweep "3a gpu-baseline cold" "$(deadline 0.88)" gpu-baseline-cold --suite gpu-baseline
if [ "$DEVICE" != cpu ]; then
  run_sweep "3b gpu-baseline graph" "$(deadline 0.90)" gpu-baseline-graph --suite gpu-baseline --cuda-graph
fi

# The frontier: attention tokens/s per GPU at the largest batch that fits 80 GiB (skipped unless
# the steps before it left time).
frontier_args=()
[ "$DEVICE" != cpu ] && read -r -a frontier_args <<< "$FRONTIER"
run_step "3c frontier" "$(deadline 0.93)" "$PY" -m mlabench frontier --device "$DEVICE" --no-report \
  --out "$WORK/runs/frontier" "${frontier_args[@]}"

# --- 4. one profile of the Triton decode case ----------------------------------------------
snapshot=()
[ "$DEVICE" != cpu ] && snapshot=(--memory-snapshot)
run_sweep "4 profile triton" "$(deadline 0.97)" profile --suite "$SUITES/configs.toml" --no-probe \
  --model deepseek-v2-lite --profile "$WORK/profile" "${snapshot[@]}"

# --- 5. memory columns (from the rows above) and the summary -----------------------------------
save
log "done in $(($(date +%s) - START))s; $OUT holds: $(cd "$OUT" && ls | tr '\n' ' ')"
cat "$OUT/summary.txt"
