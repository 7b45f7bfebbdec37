#!/usr/bin/env bash
# The checked-in formatter configuration (.swift-format for `swift format`
# from the toolchain, .clang-format for C), applied to the files this branch
# ADDS relative to the base (FORMAT_BASE, default: the merge-base with main;
# nothing to check when there is none, e.g. on main itself), or with
# FORMAT_ALL=1 to every tracked Swift and C file (what scripts/test.sh runs:
# the whole tree was formatted once, in its own commit).
#   scripts/check_format.sh            check (non-zero exit on a difference)
#   scripts/check_format.sh --fix      rewrite those files in place
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
fix=0; [[ ${1:-} == --fix ]] && fix=1
if [[ ${FORMAT_ALL:-0} == 1 ]]; then
    mapfile -t files < <(git ls-files '*.swift' '*.c' '*.h' ':!fuzz/corpus')
else
    base=${FORMAT_BASE:-$(git merge-base HEAD main 2>/dev/null || true)}
    if [[ -z $base || $base == "$(git rev-parse HEAD)" ]]; then
        echo "check_format: no base to compare with (on main): nothing to check"; exit 0
    fi
    mapfile -t files < <(git diff --name-only --diff-filter=A "$base" HEAD -- '*.swift' '*.c' '*.h')
fi
status=0
for f in "${files[@]}"; do
    [[ -f $f && ! -L $f ]] || continue
    case $f in
        *.swift)
            if ((fix)); then swift format format --in-place --configuration .swift-format "$f"
            elif ! diff -q <(swift format format --configuration .swift-format "$f") "$f" >/dev/null; then
                echo "check_format: $f differs from swift format (scripts/check_format.sh --fix)"; status=1
            fi ;;
        *.c|*.h)
            command -v clang-format >/dev/null || { echo "check_format: clang-format missing (scripts/bootstrap.sh)"; exit 1; }
            if ((fix)); then clang-format -i "$f"
            elif ! clang-format --dry-run --Werror "$f" 2>/dev/null; then
                echo "check_format: $f differs from clang-format (scripts/check_format.sh --fix)"; status=1
            fi ;;
    esac
done
((status == 0)) && echo "check_format: ${#files[@]} added file(s) formatted"
exit $status
