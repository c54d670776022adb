#!/usr/bin/env bash
# Runs one of the random model tests (tests/e2e/model_test.cc) over a range
# of seeds and says which fail; their output stays in $OUT (default
# /tmp/tidefs-model-seeds). With LOAD=1 the unit tests loop alongside each
# run (a busy machine, as under ctest -j2), and TIDEFS_MODEL_KEEP=1 keeps a
# failed run's folders and -vvv mount logs (the path is in its output);
# TIDEFS_MODEL_SCALE=N runs N times the operations.
#
# Usage: tests/e2e/model_seeds.sh TEST FROM TO [RUNS=1]
#   e.g. tests/e2e/model_seeds.sh TwoDevicesWithKilledMountsLoseNothing 1 20
# Needs root, /dev/fuse, and a build in ./build.
set -uo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 3 ] || { sed -n '2,10p' "$0"; exit 2; }
test_name=$1 from=$2 to=$3 runs=${4:-1}
out=${OUT:-/tmp/tidefs-model-seeds}
mkdir -p "$out"
failed=0
for seed in $(seq "$from" "$to"); do
  for run in $(seq "$runs"); do
    load=
    if [ "${LOAD:-0}" = 1 ]; then
      (while :; do build/unit_tests >/dev/null 2>&1; done) &
      load=$!
    fi
    log="$out/$test_name.$seed.$run.log"
    if TIDEFS_MODEL_SEED=$seed build/e2e_tests --gtest_filter="ModelTest.$test_name" >"$log" 2>&1; then
      echo "seed $seed run $run: ok"
      rm -f "$log"
    else
      echo "seed $seed run $run: FAILED (see $log)"
      failed=$((failed + 1))
    fi
    if [ -n "$load" ]; then
      kill "$load" 2>/dev/null
      wait "$load" 2>/dev/null
    fi
  done
done
echo "$failed failed"
[ "$failed" = 0 ]
