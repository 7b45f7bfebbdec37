#!/usr/bin/env bash
# The `lora serve` tests: pytest against the real server on free loopback
# ports (Tests/server/test_*.py), with the official openai client,
# schemathesis against openapi.yaml and headless Chromium on the playground.
#
#   Tests/server/run.sh PATH/TO/lora-cli [pytest args...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export LORA_CLI="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shift
cd "$here"
exec python3 -m pytest -p no:cacheprovider -q "$here" "$@"
