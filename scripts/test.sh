#!/usr/bin/env bash
# Sets up a fresh machine and runs every test. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="/opt/swift/usr/bin:$PATH"
# The bootstrap installed everything the tests use: a test that skips for a
# missing browser or package fails instead (Tests/server/conftest.py).
export LORA_TESTS_STRICT=1

echo "== whitespace errors and conflict markers (git diff --check against the empty tree)"
if git rev-parse --git-dir >/dev/null 2>&1; then
    git diff --check "$(git hash-object -t tree /dev/null)" HEAD -- . ':!*.safetensors' ':!fuzz/corpus' ':!Tests/LoRATests/Fixtures'
fi

echo "== one version source (VERSION) and the formatter on changed files"
bash scripts/check_version.sh
FORMAT_ALL=1 bash scripts/check_format.sh  # every Swift and C file (the tree was formatted once)

echo "== BLAS/LAPACKE ABI declarations vs system headers"
cc -fsyntax-only -Wall -Werror $(pkg-config --cflags openblas lapacke) -ISources/CLoraSupport scripts/check_blas_abi.c

echo "== swift build (release: the command line and liblora.so)"
# The C, Python, server and shell tests run the release build users get;
# the Swift suite runs once, under AddressSanitizer (a separate debug build:
# a plain debug build and run beside it took ~3.7 more minutes of CI).
swift build -c release --product lora-cli
swift build -c release --product lora
bash scripts/link_soname.sh .build/release

echo "== lora export-gguf read back with gguf-py, every tensor and key (Tests/gguf; LORA_TEST_LLAMA_CPP=1 adds llama.cpp)"
bash Tests/gguf/run.sh .build/release/lora-cli

echo "== the Swift suite under AddressSanitizer (the command line tests on its lora-cli, also built with ASan)"
# detect_leaks=0: LeakSanitizer reports the test frameworks' own objects at exit
# (XCTest suite runs, Swift Testing's weak references), none of ours; leaks of
# liblora are checked by valgrind on the C side below.
swift build --build-tests --sanitize=address --scratch-path .build-asan
ASAN_OPTIONS=detect_leaks=0 swift test --skip-build --sanitize=address --scratch-path .build-asan
echo "== the Swift suite again with OpenBLAS's sgemm (LORA_SGEMM=openblas): the same tolerances"
LORA_SGEMM=openblas ASAN_OPTIONS=detect_leaks=0 swift test --skip-build --sanitize=address --scratch-path .build-asan
echo "== the two Swift tests that need the release command line (LORA_CLI)"
LORA_CLI="$PWD/.build/release/lora-cli" ASAN_OPTIONS=detect_leaks=0 \
    swift test --skip-build --sanitize=address --scratch-path .build-asan --filter 'benchPrintsJSON|demoRunsEndToEnd' \
    2>&1 | tee .build-asan/release-cli-tests.log
# A renamed test would leave the filter matching nothing, which passes.
grep -q 'Test run with 2 tests' .build-asan/release-cli-tests.log || { echo "test.sh: the filter ran other than those 2 tests" >&2; exit 1; }

echo "== fuzzing: every harness for 15 s (a crash fails; inputs kept in fuzz-artifacts/)"
bash scripts/fuzz.sh all 15

echo "== crash safety: SIGKILL during training and checkpointing, resume bit-exact"
bash Tests/crash/kill_test.sh .build/release/lora-cli 20

echo "== data-parallel training under Open MPI: equivalence with one process, resume, faults (Tests/mpi)"
bash Tests/mpi/run.sh .build/release/lora-cli
echo "== data-parallel training across two network namespaces over TCP"
bash Tests/mpi/netns.sh .build/release/lora-cli

echo "== Python binding (ctypes) with pytest (with the mpi4py example under mpirun)"
LORA_LIBRARY="$PWD/.build/release/liblora.so" bash python/run_tests.sh

echo "== C API: header as C++, export list, Tests/C/test_capi*.c, examples-c, valgrind"
bash Tests/C/run.sh .build/release

echo "== lora serve: HTTP tests, the openai client, schemathesis, the playground in headless Chromium (Tests/server)"
bash Tests/server/run.sh .build/release/lora-cli

echo "== the README's Python and C snippets, verbatim, outside the checkout"
bash Tests/readme/run.sh

echo "== the LoRA product as a versioned SwiftPM dependency (a tagged clone, the README's Swift snippet)"
bash scripts/check_swift_dependency.sh
