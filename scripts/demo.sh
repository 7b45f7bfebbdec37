#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build in release
# mode, put `lora` on the PATH, and run `lora demo` on the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .build/release/lora-cli demo "$@"
