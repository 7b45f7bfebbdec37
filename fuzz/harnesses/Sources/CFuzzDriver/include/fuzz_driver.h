#ifndef LORA_FUZZ_DRIVER_H
#define LORA_FUZZ_DRIVER_H
#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver (compiler-rt, libclang_rt.fuzzer). The harnesses call it
// from their own main: SwiftPM links an executable's main under another name
// (--defsym main=<Target>_main), which rules out libFuzzer's main.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
