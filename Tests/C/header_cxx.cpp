// include/lora.h compiled as C++ (Tests/C/run.sh: c++ -std=c++11 -fsyntax-only):
// the header must stay valid C++ with C linkage for every declaration.
#include "lora.h"
#include "lora.h" // include guard

static_assert(sizeof(lora_status) == 4, "lora_status is int32_t");
static_assert(LORA_VERSION_NUMBER == LORA_VERSION_MAJOR * 10000 + LORA_VERSION_MINOR * 100 + LORA_VERSION_PATCH,
              "version macros");

// Function pointers of the declared types: the prototypes are complete.
extern "C" {
static lora_status (*const load)(lora_model **, const char *, const lora_model_params *) = lora_model_load;
static lora_token_callback const token_cb = nullptr;
static lora_progress_callback const progress_cb = nullptr;
}

int main() {
    lora_model_params p = {};
    lora_sampling_params s = {};
    lora_adapter_params a = {};
    lora_trainer_params t = {};
    lora_train_params r = {};
    lora_model_info i = {};
    lora_train_progress g = {};
    (void)p; (void)s; (void)a; (void)t; (void)r; (void)i; (void)g;
    (void)load; (void)token_cb; (void)progress_cb;
    return 0;
}
