// Compiles include/lora.h for the Swift C-ABI target, with the layout checks
// a host relies on (the header must stay C99 and these offsets never change).
#include "lora.h"
#include <stddef.h>

_Static_assert(offsetof(lora_model_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(lora_sampling_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(lora_adapter_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(lora_trainer_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(lora_train_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(lora_model_info, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(lora_engine_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(lora_request, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(lora_request_info, struct_size) == 0, "struct_size first");
_Static_assert(sizeof(lora_status) == 4, "lora_status is int32_t");
_Static_assert(LORA_GGUF_F32 == 0 && LORA_GGUF_F16 == 1, "LORA_GGUF_* values are pinned");
