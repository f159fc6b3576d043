#!/usr/bin/env bash
# Installs what the browser end-to-end tests need on a fresh Debian machine, and nothing that is
# already there: Debian's chromium (no downloaded browser build), Debian's coturn (the TURN server
# of tests/browser_turn.rs, which runs its own turnserver on free ports), iproute2 and nftables
# (tests/browser_outage.rs), and the npm packages of package-lock.json (playwright-core, esbuild,
# kurento-jsonrpc, kurento-utils) into node_modules.
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing Debian's chromium"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ ! -x /usr/bin/turnserver ]; then
  echo "setup: installing Debian's coturn"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coturn >/dev/null
fi

# tests/browser_outage.rs runs roomd and Chromium in a network namespace of its own (iproute2's
# `ip netns`) and cuts their media with an nftables rule there; it cleans up with `kill` (procps).
# tests/cluster_partition.rs cuts a cluster node off from Redis the same way.
if ! command -v ip >/dev/null || ! command -v nft >/dev/null || ! command -v kill >/dev/null; then
  echo "setup: installing iproute2, nftables and procps"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables procps >/dev/null
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup: node and npm are required" >&2
  exit 1
fi

# npm ci when node_modules is missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci in tests/browser"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "setup: $(/usr/bin/chromium --version 2>/dev/null | head -1), coturn $(dpkg-query -W -f='${Version}' coturn 2>/dev/null), node $(node --version)"
