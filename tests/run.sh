#!/usr/bin/env bash
# The whole test suite: installs the browser tests' prerequisites (Debian's chromium, the npm
# packages of tests/browser) when missing, then runs every Rust test, the headless-browser
# end-to-end suite (tests/browser.rs) included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/browser/setup.sh
cargo test --workspace --locked "$@"
