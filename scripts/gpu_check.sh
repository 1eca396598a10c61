#!/usr/bin/env bash
# The GPU check, one prepared command (`make gpu-check`), sized to finish in under 8 minutes on one H100/H200:
#
#   1. the CUDA tests: pytest -m cuda (the benchmark cases are left to step 2);
#   2. the benchmarks on CUDA: every case of tests/benchmarks marked cuda, eager and compiled in two pytest runs
#      (each its own JSON, so a compile that runs long loses only its half), with the device and the GPU's name
#      recorded per case, then results/bench/cuda/BENCH.md from scripts/bench_report.py;
#   3. one seed of each method of experiments/pendulum_compare.toml and of the parallel-environment baselines
#      (PPO, PTD3 at their defaults, EXTRA_ALGOS) on CUDA (a copy with seeds = [0] as the experiment
#      pendulum_compare_cuda, every run at once), results/bench/cuda/pendulum_compare_cuda/summary.csv.
#
# Each step runs under its own time limit (GPU_CHECK_TESTS_S, GPU_CHECK_EAGER_S, GPU_CHECK_COMPILED_S,
# GPU_CHECK_EXPERIMENT_S seconds; 55 + 110 + 130 + 140, plus 20 for each report: 475 s at most by default); a step
# that fails or runs out of time is reported and the next one still runs.
# The exit status is 0 only when every step passed. Without a CUDA GPU it stops at once with a one-line error.
#
#   scripts/gpu_check.sh            # or: make gpu-check
#   scripts/gpu_check.sh --dry-run  # print the steps and check the experiment copy's runs; needs no GPU
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PYTHON=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-results/bench/cuda}
EXP=pendulum_compare_cuda
TESTS_S=${GPU_CHECK_TESTS_S:-55}
EAGER_S=${GPU_CHECK_EAGER_S:-110}
COMPILED_S=${GPU_CHECK_COMPILED_S:-130}
EXPERIMENT_S=${GPU_CHECK_EXPERIMENT_S:-140}
REPORT_S=20
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "gpu_check.sh: unknown argument '$1' (expected nothing or --dry-run)" >&2; exit 2 ;;
esac

if [[ $DRY_RUN == 0 ]]; then
  "$PYTHON" -c 'import sys, torch; torch.cuda.is_available() or sys.exit(
"gpu_check: no CUDA GPU (torch.cuda.is_available() is False); run make gpu-check on a machine with one")' || exit 1
fi

# The experiment copy: pendulum_compare with one seed, under a temporary name (its file stem names the results).
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
TOML="$TMP/$EXP.toml"
"$PYTHON" - experiments/pendulum_compare.toml "$TOML" <<'EOF' || exit 2
import re, sys, tomllib
from pathlib import Path

EXTRA_ALGOS = ["ppo", "ptd3"]  # the parallel-environment baselines, at their trainers' defaults
text = Path(sys.argv[1]).read_text()
copy, count = re.subn(r"(?m)^seeds\s*=\s*\[[^\]]*\]", "seeds = [0]", text)
algos = tomllib.loads(text)["experiment"]["algos"] + EXTRA_ALGOS
copy, count_algos = re.subn(r"(?m)^algos\s*=\s*\[[^\]]*\]", "algos = " + repr(algos).replace("'", '"'), copy)
copy += "".join(f"\n[{algo}]\n" for algo in EXTRA_ALGOS)
if count != 1 or count_algos != 1 or tomllib.loads(copy)["experiment"]["seeds"] != [0]:
    sys.exit(f"gpu_check: cannot set seeds = [0] and extend algos in {sys.argv[1]} (expected one 'seeds = [...]' "
             "and one 'algos = [...]' line)")
Path(sys.argv[2]).write_text(copy)
EOF
JOBS=$("$PYTHON" -c "import sys, tomllib; print(len(tomllib.load(open(sys.argv[1], 'rb'))['experiment']['algos']))" "$TOML")

FAILED=()
step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a time limit (SIGINT first, so pytest still writes JSON)
  local name=$1 seconds=$2
  shift 2
  echo "== gpu_check: $name (at most ${seconds} s): $*"
  if [[ $DRY_RUN == 1 ]]; then return 0; fi
  local start=$SECONDS status=0
  timeout --signal=INT --kill-after=20 "$seconds" "$@" || status=$?
  echo "== gpu_check: $name: exit $status after $((SECONDS - start)) s"
  if [[ $status != 0 ]]; then FAILED+=("$name (exit $status$([[ $status == 124 ]] && echo ', out of time'))"); fi
}

[[ $DRY_RUN == 1 ]] || mkdir -p "$OUT"
step "CUDA tests" "$TESTS_S" "$PYTHON" -m pytest -q -m cuda --benchmark-disable --ignore=tests/benchmarks
step "CUDA benchmarks, eager" "$EAGER_S" "$PYTHON" -m pytest tests/benchmarks -q -m cuda --benchmark-only \
  -k "not compiled" --benchmark-json="$OUT/benchmark-eager.json"
step "CUDA benchmarks, compiled" "$COMPILED_S" "$PYTHON" -m pytest tests/benchmarks -q -m cuda --benchmark-only \
  -k "compiled" --benchmark-json="$OUT/benchmark-compiled.json"
REPORT=()
for json in "$OUT/benchmark-eager.json" "$OUT/benchmark-compiled.json"; do
  if [[ -s $json || $DRY_RUN == 1 ]]; then REPORT+=("$json"); fi
done
if [[ ${#REPORT[@]} -gt 0 ]]; then
  step "CUDA BENCH.md" "$REPORT_S" "$PYTHON" scripts/bench_report.py "${REPORT[@]}" --out "$OUT/BENCH.md"
else
  FAILED+=("CUDA BENCH.md (no benchmark JSON was written)")
fi
if [[ $DRY_RUN == 1 ]]; then
  echo "== gpu_check: the experiment copy's runs (research.experiment --dry-run):"
  "$PYTHON" -m research.experiment "$TOML" --dry-run --results "$OUT" || exit 1
fi
step "pendulum_compare, seed 0, every method on CUDA" "$EXPERIMENT_S" "$PYTHON" -m research.experiment "$TOML" \
  --jobs "$JOBS" --device cuda --results "$OUT" --quiet
step "pendulum_compare summary" "$REPORT_S" "$PYTHON" scripts/aggregate.py "$OUT/$EXP"

if [[ $DRY_RUN == 1 ]]; then exit 0; fi
if [[ ${#FAILED[@]} -gt 0 ]]; then
  printf '== gpu_check: FAILED: %s\n' "${FAILED[@]}"
  exit 1
fi
echo "== gpu_check: every step passed; results in $OUT/"
