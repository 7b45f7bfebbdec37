/*
 * generate.c — load a GPT-2 directory and stream a completion.
 *
 *   generate MODEL_DIR [PROMPT] [MAX_NEW_TOKENS]
 *
 * Prints the model's shape, then the prompt followed by the new text as the
 * tokens arrive (a token callback), then the full text liblora returned.
 */
#include "lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reports a failed call with liblora's message; returns 1 on failure. */
static int failed(lora_status status, const char *what) {
    if (status == LORA_OK) return 0;
    fprintf(stderr, "generate: %s failed: %s: %s\n", what, lora_status_string(status), lora_last_error());
    return 1;
}

/* Called on this thread for each new token; the piece is not NUL-terminated. */
static int32_t print_piece(int32_t token, const char *piece, size_t piece_len, void *user_data) {
    int *count = user_data;
    (void)token;
    (*count)++;
    fwrite(piece, 1, piece_len, stdout);
    fflush(stdout);
    return 0; /* non-zero would stop the generation (LORA_ABORTED) */
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s MODEL_DIR [PROMPT] [MAX_NEW_TOKENS]\n", argv[0]);
        return 2;
    }
    const char *model_dir = argv[1];
    const char *prompt = argc > 2 ? argv[2] : "Hello";
    int max_new_tokens = argc > 3 ? atoi(argv[3]) : 40;

    printf("liblora %s (ABI %u)\n", lora_version_string(), lora_abi_version());
    if (lora_abi_version() != LORA_ABI_VERSION) {
        fprintf(stderr, "generate: built for ABI %d, the library has %u\n", LORA_ABI_VERSION, lora_abi_version());
        return 1;
    }

    int rc = 1;
    lora_model *model = NULL;
    lora_model_params mp;
    lora_model_default_params(&mp);
    if (failed(lora_model_load(&model, model_dir, &mp), "lora_model_load")) goto done;

    lora_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (failed(lora_model_get_info(model, &info), "lora_model_get_info")) goto done;
    printf("model %s: %d layers, %d heads, n_embd %d, n_inner %d, vocab %d, %d positions, %lld parameters\n", model_dir,
           info.n_layer, info.n_head, info.n_embd, info.n_inner, info.n_vocab, info.n_positions,
           (long long)info.n_params);
    printf("tokenizer: %s, eos token %d, blas_core: %s\n", info.has_tokenizer ? "yes" : "no", info.eos_token,
           info.blas_core);
    if (!info.has_tokenizer) {
        fprintf(stderr, "generate: %s has no tokenizer (vocab.json + merges.txt or tokenizer.json)\n", model_dir);
        goto done;
    }

    lora_sampling_params sp;
    lora_sampling_default_params(&sp);
    sp.seed = 42; /* same seed, same text */
    sp.max_new_tokens = max_new_tokens;
    sp.top_k = 40;
    printf("sampling: max_new_tokens %d, temperature %g, top_k %d, top_p %g, seed %llu\n", sp.max_new_tokens,
           sp.temperature, sp.top_k, sp.top_p, (unsigned long long)sp.seed);

    char text[8192];
    size_t needed = 0;
    int n_tokens = 0;
    printf("---\n%s", prompt);
    fflush(stdout);
    lora_status s = lora_generate(model, prompt, &sp, print_piece, &n_tokens, text, sizeof text, &needed);
    printf("\n---\n");
    if (s == LORA_BUFFER_TOO_SMALL) {
        /* The text was streamed above but is longer than `text`. */
        printf("(%d tokens streamed; the text needs %zu bytes)\n", n_tokens, needed + 1);
    } else if (failed(s, "lora_generate")) {
        goto done;
    } else {
        printf("%d tokens, %zu bytes: \"%s\"\n", n_tokens, needed, text);
    }
    rc = 0;
done:
    lora_model_free(model);
    return rc;
}
