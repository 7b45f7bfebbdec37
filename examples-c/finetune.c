/*
 * finetune.c — LoRA fine-tuning of a GPT-2 directory on a text file.
 *
 *   finetune MODEL_DIR DATA_FILE OUT_DIR [MAX_STEPS] [PROMPT]
 *
 * Creates a LoRA adapter (r 8, alpha 16 on c_attn, attn.c_proj, mlp.c_fc),
 * trains it for MAX_STEPS (default 20) optimizer steps with one progress line
 * per step, reports the evaluation loss on DATA_FILE before and after, saves
 * the adapter in PEFT's layout into OUT_DIR, then loads it back, attaches it
 * and generates a sample.
 */
#include "lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failed(lora_status status, const char *what) {
    if (status == LORA_OK) return 0;
    fprintf(stderr, "finetune: %s failed: %s: %s\n", what, lora_status_string(status), lora_last_error());
    return 1;
}

/* Called on this thread after each optimizer step. */
static int32_t print_progress(const lora_train_progress *p, void *user_data) {
    (void)user_data;
    printf("step %3d/%d  loss %.4f  lr %.3e  grad_norm %.3f  %.0f tokens/s\n", p->step, p->max_steps, p->loss,
           p->learning_rate, p->grad_norm, p->tokens_per_second);
    fflush(stdout);
    return 0; /* non-zero stops after this step (LORA_ABORTED) */
}

static int32_t print_piece(int32_t token, const char *piece, size_t piece_len, void *user_data) {
    (void)token;
    (void)user_data;
    fwrite(piece, 1, piece_len, stdout);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: %s MODEL_DIR DATA_FILE OUT_DIR [MAX_STEPS] [PROMPT]\n", argv[0]);
        return 2;
    }
    const char *model_dir = argv[1], *data = argv[2], *out_dir = argv[3];
    int max_steps = argc > 4 ? atoi(argv[4]) : 20;
    const char *prompt = argc > 5 ? argv[5] : "The";
    if (max_steps < 1) {
        fprintf(stderr, "finetune: MAX_STEPS must be >= 1\n");
        return 2;
    }

    int rc = 1;
    lora_model *model = NULL;
    lora_adapter *adapter = NULL, *loaded = NULL;
    lora_trainer *trainer = NULL;

    if (failed(lora_model_load(&model, model_dir, NULL), "lora_model_load")) goto done;
    lora_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (failed(lora_model_get_info(model, &info), "lora_model_get_info")) goto done;
    printf("model %s: %d layers, n_embd %d, %d positions, %lld parameters, blas_core %s\n", model_dir, info.n_layer,
           info.n_embd, info.n_positions, (long long)info.n_params, info.blas_core);

    /* The adapter: B starts at zero, so step 0 is the base model. */
    lora_adapter_params ap;
    lora_adapter_default_params(&ap);
    ap.r = 8;
    ap.lora_alpha = 16;
    ap.target_modules = "c_attn,attn.c_proj,mlp.c_fc";
    ap.seed = 1;
    if (failed(lora_adapter_create(&adapter, model, &ap), "lora_adapter_create")) goto done;
    printf("adapter: r %d, alpha %g, targets %s: %lld trainable parameters (%.2f%% of the model)\n", ap.r,
           ap.lora_alpha, ap.target_modules, (long long)lora_adapter_n_params(adapter),
           100.0 * (double)lora_adapter_n_params(adapter) / (double)info.n_params);

    /* The trainer: blocks as long as the model allows, up to 128 tokens. */
    lora_trainer_params tp;
    lora_trainer_default_params(&tp);
    tp.learning_rate = 5e-3f;
    tp.max_steps = max_steps;
    tp.batch_size = 4;
    tp.block_size = info.n_positions < 128 ? info.n_positions : 128;
    tp.seed = 1;
    if (failed(lora_trainer_create(&trainer, model, adapter, &tp), "lora_trainer_create")) goto done;
    printf("trainer: %d steps, batch %d x %d tokens, lr %g (linear decay)\n", tp.max_steps, tp.batch_size,
           tp.block_size, tp.learning_rate);

    float loss_before = 0, ppl_before = 0, loss_after = 0, ppl_after = 0;
    if (failed(lora_trainer_evaluate(trainer, data, &loss_before, &ppl_before), "lora_trainer_evaluate")) goto done;
    printf("eval before: loss %.4f, perplexity %.2f\n", loss_before, ppl_before);

    lora_train_params rp;
    lora_train_default_params(&rp);
    const char *paths[1] = {data};
    if (failed(lora_trainer_train(trainer, paths, 1, &rp, print_progress, NULL), "lora_trainer_train")) goto done;

    if (failed(lora_trainer_evaluate(trainer, data, &loss_after, &ppl_after), "lora_trainer_evaluate")) goto done;
    printf("eval after:  loss %.4f, perplexity %.2f (%+.4f)\n", loss_after, ppl_after, loss_after - loss_before);

    if (failed(lora_adapter_save(adapter, out_dir), "lora_adapter_save")) goto done;
    printf("adapter saved to %s (adapter_config.json, adapter_model.safetensors)\n", out_dir);

    /* Free in reverse order of creation; the trainer attached the adapter. */
    lora_trainer_free(trainer);
    trainer = NULL;
    if (failed(lora_model_detach(model, adapter), "lora_model_detach")) goto done;
    lora_adapter_free(adapter);
    adapter = NULL;

    /* Load the saved adapter as any PEFT adapter, attach it, generate. */
    if (failed(lora_adapter_load(&loaded, model, out_dir), "lora_adapter_load")) goto done;
    if (failed(lora_model_attach(model, loaded, 1.0f), "lora_model_attach")) goto done;
    lora_sampling_params sp;
    lora_sampling_default_params(&sp);
    sp.seed = 42;
    sp.max_new_tokens = 32;
    sp.top_k = 40;
    printf("sample with the adapter:\n---\n%s", prompt);
    fflush(stdout);
    size_t needed = 0;
    lora_status s = lora_generate(model, prompt, &sp, print_piece, NULL, NULL, 0, &needed);
    printf("\n---\n");
    if (failed(s, "lora_generate")) goto done;
    if (failed(lora_model_detach(model, loaded), "lora_model_detach")) goto done;
    rc = 0;
done:
    lora_trainer_free(trainer);
    lora_adapter_free(loaded);
    lora_adapter_free(adapter);
    lora_model_free(model);
    return rc;
}
