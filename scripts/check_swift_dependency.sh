#!/usr/bin/env bash
# Shows that liblora works as a versioned SwiftPM dependency: clones this
# repository's HEAD (committed state) into a temporary folder, tags it with
# the version of include/lora.h, and builds and runs a tiny package that
# depends on it with `.package(url: "file://…", from: "<version>")` and whose
# main.swift is the README's Swift snippet (paths pointed at the clone).
#
# SwiftPM refuses a versioned dependency whose targets use unsafeFlags, so
# this fails if one creeps back into a target the LoRA product compiles.
#
# Usage: scripts/check_swift_dependency.sh   (prints "ok" at the end)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"

major=$(sed -n 's/^#define LORA_VERSION_MAJOR \([0-9]*\).*/\1/p' "$root/include/lora.h")
minor=$(sed -n 's/^#define LORA_VERSION_MINOR \([0-9]*\).*/\1/p' "$root/include/lora.h")
patch=$(sed -n 's/^#define LORA_VERSION_PATCH \([0-9]*\).*/\1/p' "$root/include/lora.h")
version="$major.$minor.$patch"

work=$(mktemp -d "${TMPDIR:-/tmp}/lora-dependency.XXXXXX")
trap 'rm -rf "$work"' EXIT

git clone --quiet "$root" "$work/liblora"
git -C "$work/liblora" tag -f "$version" >/dev/null
echo "liblora $(git -C "$work/liblora" rev-parse --short HEAD) tagged $version in $work/liblora"

mkdir -p "$work/app/Sources/App"
cat > "$work/app/Package.swift" <<EOF
// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "app",
    dependencies: [
        .package(url: "file://$work/liblora", from: "$version"),
    ],
    targets: [
        .executableTarget(name: "App", dependencies: [.product(name: "LoRA", package: "liblora")]),
    ]
)
EOF

# The README's Swift snippet: the first ```swift block after "### Swift".
awk '/^### Swift/ { s = 1 } s && /^```swift/ { inside = 1; next } inside && /^```/ { exit } inside { print }' \
    "$root/README.md" > "$work/snippet.swift"
[ -s "$work/snippet.swift" ] || { echo "no Swift snippet found in README.md" >&2; exit 1; }
# Training text: any text works with the embedded model's byte-level tokenizer.
cp "$root/README.md" "$work/quotes.txt"
sed -e "s|\"models/fortunes-gpt2\"|\"$work/liblora/models/fortunes-gpt2\"|" \
    -e "s|\"quotes.txt\"|\"$work/quotes.txt\"|" \
    -e "s|\"my-adapter\"|\"$work/my-adapter\"|" \
    "$work/snippet.swift" > "$work/app/Sources/App/main.swift"

cd "$work/app"
nice -n 19 swift build 2>&1 | tail -3
out=$(nice -n 19 .build/debug/App)
echo "$out" | tail -3
[ -f "$work/my-adapter/adapter_config.json" ] && [ -f "$work/my-adapter/adapter_model.safetensors" ] \
    || { echo "the snippet did not save its adapter" >&2; exit 1; }
[ "$(echo "$out" | grep -c '^[0-9]* [0-9.e+-]*$')" -ge 1 ] || { echo "no training progress printed" >&2; exit 1; }
echo ok
