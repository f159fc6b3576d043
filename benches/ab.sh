#!/usr/bin/env bash
# A/B of two roomd release builds under identical load: alternates them RUNS times (default 3)
# through the load generator, so slow drift of a shared machine hits both alike.
#   bash benches/ab.sh <roomd-A> <roomd-B> [loadgen options...]
# Build a binary with `CARGO_TARGET_DIR=target-bench cargo build --release` and copy
# target-bench/release/roomd aside before switching commits.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash benches/ab.sh <roomd-A> <roomd-B> [loadgen options]" >&2
  exit 2
fi
a=$1 b=$2
shift 2
opts=("$@")
if [ ${#opts[@]} -eq 0 ]; then
  opts=(--scenario 4x10,ramp --ramp 200 --suite gcm --seconds 5)
fi
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-bench}
for i in $(seq 1 "${RUNS:-3}"); do
  for bin in "$a" "$b"; do
    echo "== $bin (run $i)"
    LOADGEN_ROOMD_BIN=$bin timeout 900 cargo bench --bench loadgen --locked -- \
      "${opts[@]}" --server roomd --no-reference | grep -E '^(server|roomd)'
  done
done
