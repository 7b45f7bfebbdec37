#!/usr/bin/env bash
# Sets up a fresh machine and runs every test. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="/opt/swift/usr/bin:$PATH"

echo "== swift build"
swift build --build-tests
echo "== swift test"
swift test --skip-build
