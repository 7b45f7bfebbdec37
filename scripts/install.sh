#!/usr/bin/env bash
# Installs what liblora needs, builds it in release mode and puts the command
# line on the PATH as `lora` (a link into this checkout's build folder).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="/opt/swift/usr/bin:$PATH"
swift build -c release --product lora-cli
swift build -c release --product lora
bin=/usr/local/bin
[[ -w $bin ]] || bin="$HOME/.local/bin"
mkdir -p "$bin"
ln -sf "$PWD/.build/release/lora-cli" "$bin/lora"
echo "installed: $bin/lora -> $PWD/.build/release/lora-cli"
echo "C library: $PWD/.build/release/liblora.so (header: $PWD/include/lora.h)"
case ":$PATH:" in *":$bin:"*) ;; *) echo "note: add $bin to your PATH" ;; esac
