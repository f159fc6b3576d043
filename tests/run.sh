#!/usr/bin/env bash
# The whole test suite: installs the browser tests' prerequisites (Debian's chromium, the npm
# packages of tests/browser) and Debian's redis-server (for the cluster tests) when missing,
# then runs every Rust test, the headless-browser end-to-end suite (tests/browser.rs) included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/browser/setup.sh
# The cluster tests (tests/cluster_*.rs, tests/browser_cluster.rs) start their own redis-server on
# a free loopback port; tests/cluster_partition.rs, like the namespace browser tests, needs root,
# iproute2 and nftables (setup.sh installs the last two).
if ! command -v redis-server >/dev/null; then
  echo "run.sh: installing Debian's redis-server"
  if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
cargo test --workspace --locked "$@"
