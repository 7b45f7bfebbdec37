/* test_capi_training.c — training: trainer errors, epochs, steps against PEFT, checkpoints and resume. Part of
 * test_capi (see test_capi.c). */
#include "test_capi.h"

/* ---- Training ------------------------------------------------------------ */

typedef struct progress_log {
    int calls;
    int stop_at;  /* return non-zero at this call (0: never) */
    int bad;      /* a report out of order or not finite */
    int validate; /* validation_loss is expected at every step */
    int32_t last_step, max_steps;
} progress_log;

static int32_t log_progress(const lora_train_progress *p, void *user_data) {
    progress_log *l = user_data;
    l->calls++;
    if (p == NULL || p->step != l->last_step + 1 || !isfinite(p->loss) || !(p->learning_rate >= 0) ||
        !(p->tokens_per_second > 0) || !isfinite(p->grad_norm) ||
        (l->validate ? !isfinite(p->validation_loss) : !isnan(p->validation_loss)))
        l->bad++;
    if (p) {
        l->last_step = p->step;
        l->max_steps = p->max_steps;
    }
    return l->stop_at > 0 && l->calls >= l->stop_at;
}

static const char *training_text(void) {
    static char file[1024];
    if (file[0]) return file;
    snprintf(file, sizeof file, "%s/train.txt", workdir);
    char text[8192] = "";
    for (int i = 0; i < 5; i++)
        strcat(text, "The quick brown fox jumps over the lazy dog. Hello, world! A stitch in time saves nine.\n");
    if (!write_file(file, text)) CHECK(0, "cannot write %s", file);
    return file;
}

static void trainer_params(lora_trainer_params *tp, int batch, int block, int steps) {
    lora_trainer_default_params(tp);
    tp->learning_rate = 1e-2f;
    tp->lr_scheduler = LORA_SCHEDULER_CONSTANT;
    tp->batch_size = batch;
    tp->block_size = block;
    tp->max_steps = steps;
    tp->seed = 7;
}

/* A lora_gradient_reducer whose transport has failed: counts its calls. */
static int32_t failing_reducer(float *buffer, size_t count, void *user_data) {
    (void)buffer;
    (void)count;
    ++*(int *)user_data;
    return 7;
}

void test_trainer_errors(void) {
    lora_model *m = load_model("gpt2-tok");
    lora_model *other = load_model("gpt2-a");
    lora_adapter *ad = NULL, *ad_other = NULL;
    lora_trainer *t = NULL;
    if (!m || !other) goto done;
    REQUIRE_OK(lora_adapter_create(&ad, m, NULL));
    REQUIRE_OK(lora_adapter_create(&ad_other, other, NULL));
    lora_trainer_params tp;
    lora_trainer *bad = SENTINEL(lora_trainer);

    EXPECT(lora_trainer_create(NULL, m, ad, NULL), LORA_INVALID_ARGUMENT);
    EXPECT(lora_trainer_create(&bad, NULL, ad, NULL), LORA_INVALID_ARGUMENT);
    CHECK(bad == NULL, "*out not NULL after NULL model");
    /* NULL params are the defaults: block_size 0 becomes min(256, n_positions) = 64. */
    lora_trainer *def = NULL;
    EXPECT(lora_trainer_create(&def, m, ad, NULL), LORA_OK);
    if (def) {
        int32_t ids[TOK_POSITIONS + 1];
        for (int i = 0; i <= TOK_POSITIONS; i++) ids[i] = i % 50;
        float l = 0;
        EXPECT(lora_trainer_step(def, ids, NULL, 1, TOK_POSITIONS, &l), LORA_OK);
        EXPECT(lora_trainer_step(def, ids, NULL, 1, TOK_POSITIONS + 1, &l), LORA_INVALID_ARGUMENT);
        lora_trainer_free(def);
    }
    bad = SENTINEL(lora_trainer);
    EXPECT(lora_trainer_create(&bad, m, ad_other, NULL), LORA_INVALID_ARGUMENT);
    CHECK(bad == NULL, "*out not NULL after an adapter of another model");
#define BAD_TRAINER(field, value)                                                                                      \
    do {                                                                                                               \
        trainer_params(&tp, 2, 16, 4);                                                                                 \
        tp.field = value;                                                                                              \
        bad = SENTINEL(lora_trainer);                                                                                  \
        EXPECT(lora_trainer_create(&bad, m, ad, &tp), LORA_INVALID_ARGUMENT);                                          \
        CHECK(bad == NULL, "*out not NULL after " #field " = " #value);                                                \
        lora_trainer_free(bad == SENTINEL(lora_trainer) ? NULL : bad);                                                 \
    } while (0)
    BAD_TRAINER(struct_size, 0);
    BAD_TRAINER(struct_size, sizeof tp + 4);
    BAD_TRAINER(learning_rate, NAN);
    BAD_TRAINER(learning_rate, -1.0f);
    BAD_TRAINER(weight_decay, INFINITY);
    BAD_TRAINER(adam_beta1, 1.0f);
    BAD_TRAINER(adam_beta2, NAN);
    BAD_TRAINER(adam_epsilon, 0.0f);
    BAD_TRAINER(lr_scheduler, 4);
    BAD_TRAINER(lr_scheduler, -1);
    BAD_TRAINER(warmup_steps, -1);
    BAD_TRAINER(max_steps, 0);
    BAD_TRAINER(gradient_accumulation_steps, 0);
    BAD_TRAINER(max_grad_norm, NAN);
    BAD_TRAINER(batch_size, 0);
    BAD_TRAINER(block_size, 1);
    BAD_TRAINER(block_size, -1);
    BAD_TRAINER(block_size, TOK_POSITIONS + 1);

    trainer_params(&tp, 2, 16, 3);
    REQUIRE_OK(lora_trainer_create(&t, m, ad, &tp));
    CHECK(lora_trainer_get_step(t) == 0, "fresh trainer step %d", lora_trainer_get_step(t));
    {
        const char *data = training_text();
        const char *paths[1] = {data};
        const char *missing[1] = {path("%s/no-such-file.txt", workdir)};
        lora_train_params rp;
        lora_train_default_params(&rp);
        EXPECT(lora_trainer_train(NULL, paths, 1, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
        EXPECT(lora_trainer_train(t, NULL, 1, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
        EXPECT(lora_trainer_train(t, paths, 0, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
        EXPECT(lora_trainer_train(t, missing, 1, &rp, NULL, NULL), LORA_IO_ERROR);
        rp.struct_size = 0;
        EXPECT(lora_trainer_train(t, paths, 1, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
        rp.struct_size = sizeof rp + 4;
        EXPECT(lora_trainer_train(t, paths, 1, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
        lora_train_default_params(&rp);
        rp.validation_fraction = NAN;
        EXPECT(lora_trainer_train(t, paths, 1, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
        rp.validation_fraction = -0.25f;
        EXPECT(lora_trainer_train(t, paths, 1, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
        lora_train_default_params(&rp);
        rp.eval_steps = -1;
        EXPECT(lora_trainer_train(t, paths, 1, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
        lora_train_default_params(&rp);
        rp.save_steps = 1; /* without checkpoint_dir */
        EXPECT(lora_trainer_train(t, paths, 1, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
        lora_train_default_params(&rp);
        {
            /* A bad JSONL record names its line. */
            const char *jsonl = path("%s/bad.jsonl", workdir);
            CHECK(write_file(jsonl, "{\"text\": \"fine\"}\n{\"text\": 3}\n"), "write jsonl");
            const char *jp[1] = {jsonl};
            EXPECT(lora_trainer_train(t, jp, 1, &rp, NULL, NULL), LORA_INVALID_FILE);
            CHECK(strstr(lora_last_error(), "2") != NULL, "the bad record's line is not named: \"%s\"",
                  lora_last_error());
        }
        CHECK(lora_trainer_get_step(t) == 0, "failed calls took steps: %d", lora_trainer_get_step(t));
        {
            /* LoRA+: the ratio must be a positive finite number, and is for adapters only. */
            lora_trainer_params lp;
            lora_trainer_default_params(&lp);
            lora_trainer *t2 = SENTINEL(lora_trainer);
            float bad_ratios[2] = {-1.0f, NAN};
            for (int i = 0; i < 2; i++) {
                lp.loraplus_lr_ratio = bad_ratios[i];
                EXPECT(lora_trainer_create(&t2, m, ad, &lp), LORA_INVALID_ARGUMENT);
                CHECK(t2 == NULL, "*out not NULL after loraplus_lr_ratio %g", bad_ratios[i]);
            }
            lp.loraplus_lr_ratio = 4.0f;
            EXPECT(lora_trainer_create(&t2, m, NULL, &lp), LORA_INVALID_ARGUMENT); /* full fine-tuning */
            /* 0 is plain AdamW, as 1: a 0.1.0 program that zero-fills the struct
             * leaves the field (its tail padding) at 0, and full fine-tuning,
             * which refuses LoRA+, must still start. */
            lp.loraplus_lr_ratio = 0.0f;
            EXPECT(lora_trainer_create(&t2, m, NULL, &lp), LORA_OK);
            lora_trainer_free(t2);
            t2 = NULL;
            EXPECT(lora_trainer_create(&t2, m, ad, &lp), LORA_OK);
            lora_trainer_free(t2);
            t2 = NULL;
        }
        {
            /* GPT-2's own dropouts (gpt2-tok's config: 0.1 each): a training
             * step's loss changes, evaluation's does not; a struct of the size
             * before model_dropout (72 bytes) leaves them off. */
            lora_adapter *a0 = NULL;
            REQUIRE_OK(lora_adapter_create(&a0, m, NULL));
            int32_t ids[2 * 16];
            for (int i = 0; i < 2 * 16; i++) ids[i] = (i * 7 + 3) % 50;
            float losses[3] = {0, 0, 0}, evals[2] = {0, 0}, ppl = 0;
            for (int k = 0; k < 3; k++) {
                lora_trainer_params dp;
                trainer_params(&dp, 2, 16, 4);
                dp.learning_rate = 0.0f; /* the adapter stays as it is */
                dp.model_dropout = k != 0;
                if (k == 2) dp.struct_size = 72;
                lora_trainer *td = NULL;
                EXPECT(lora_trainer_create(&td, m, a0, &dp), LORA_OK);
                if (!td) continue;
                EXPECT(lora_trainer_step(td, ids, NULL, 2, 16, &losses[k]), LORA_OK);
                if (k < 2) EXPECT(lora_trainer_evaluate(td, data, &evals[k], &ppl), LORA_OK);
                lora_trainer_free(td);
            }
            CHECK(losses[0] != losses[1], "model_dropout did not change the step's loss (%g)", losses[0]);
            CHECK(losses[2] == losses[0], "a 72-byte struct applied model_dropout: %g vs %g", losses[2], losses[0]);
            CHECK(evals[0] == evals[1] && evals[0] > 0, "evaluation with model_dropout: %g vs %g", evals[1], evals[0]);
            lora_adapter_free(a0);
        }
        {
            /* Data parallel: bad ranks are refused; a reducer that fails stops the run before any step. */
            int calls = 0;
            EXPECT(lora_trainer_set_gradient_reducer(NULL, 0, 2, failing_reducer, &calls), LORA_INVALID_ARGUMENT);
            EXPECT(lora_trainer_set_gradient_reducer(t, 2, 2, failing_reducer, &calls), LORA_INVALID_ARGUMENT);
            EXPECT(lora_trainer_set_gradient_reducer(t, -1, 2, failing_reducer, &calls), LORA_INVALID_ARGUMENT);
            EXPECT(lora_trainer_set_gradient_reducer(t, 0, 0, failing_reducer, &calls), LORA_INVALID_ARGUMENT);
            EXPECT(lora_trainer_set_gradient_reducer(t, 0, 2, failing_reducer, &calls), LORA_OK);
            EXPECT(lora_trainer_train(t, paths, 1, &rp, NULL, NULL), LORA_ABORTED);
            CHECK(calls == 1 && lora_trainer_get_step(t) == 0, "failing reducer: %d calls, step %d", calls,
                  lora_trainer_get_step(t));
            EXPECT(lora_trainer_set_gradient_reducer(t, 0, 1, NULL, NULL), LORA_OK); /* one process again */
        }

        /* A callback that stops after the first step. */
        progress_log log;
        memset(&log, 0, sizeof log);
        log.stop_at = 1;
        EXPECT(lora_trainer_train(t, paths, 1, NULL, log_progress, &log), LORA_ABORTED); /* NULL: defaults */
        CHECK(log.calls == 1 && lora_trainer_get_step(t) == 1, "abort: %d calls, step %d", log.calls,
              lora_trainer_get_step(t));
        /* Evaluate: loss and perplexity agree. */
        float loss = 0, ppl = 0;
        EXPECT(lora_trainer_evaluate(t, data, &loss, &ppl), LORA_OK);
        CHECK(isfinite(loss) && loss > 0 && fabsf(ppl - expf(loss)) <= 1e-3f * ppl, "evaluate loss %g perplexity %g",
              loss, ppl);
        EXPECT(lora_trainer_evaluate(t, missing[0], &loss, &ppl), LORA_IO_ERROR);
        EXPECT(lora_trainer_evaluate(t, NULL, &loss, &ppl), LORA_INVALID_ARGUMENT);
        EXPECT(lora_trainer_evaluate(NULL, data, &loss, &ppl), LORA_INVALID_ARGUMENT);
        /* The rest of the run: steps 2 and 3, reported in order, a checkpoint after each. */
        memset(&log, 0, sizeof log);
        log.last_step = 1;
        rp.save_steps = 1;
        rp.checkpoint_dir = path("%s/train-checkpoints", workdir);
        EXPECT(lora_trainer_train(t, paths, 1, &rp, log_progress, &log), LORA_OK);
        CHECK(log.calls == 2 && log.bad == 0 && log.last_step == 3 && log.max_steps == 3,
              "progress: %d calls, %d bad, last step %d of %d", log.calls, log.bad, log.last_step, log.max_steps);
        CHECK(lora_trainer_get_step(t) == 3, "step %d after the run", lora_trainer_get_step(t));
        CHECK(is_dir(path("%s/checkpoint-2", rp.checkpoint_dir)) && is_dir(path("%s/checkpoint-3", rp.checkpoint_dir)),
              "save_steps 1 did not write checkpoint-2 and checkpoint-3");
        /* At max_steps already: nothing more to do. */
        memset(&log, 0, sizeof log);
        log.last_step = 3;
        lora_train_default_params(&rp);
        EXPECT(lora_trainer_train(t, paths, 1, &rp, log_progress, &log), LORA_OK);
        CHECK(log.calls == 0 && lora_trainer_get_step(t) == 3, "a finished trainer ran %d more steps", log.calls);
    }
    /* A validation split evaluated at every step. */
    {
        lora_trainer *tv = NULL;
        lora_adapter *av = NULL;
        lora_train_params rp;
        lora_train_default_params(&rp);
        rp.validation_fraction = 0.25f;
        rp.eval_steps = 1;
        /* Text and JSONL records together. */
        const char *paths[2] = {training_text(), path("%s/data/records.jsonl", fixtures)};
        trainer_params(&tp, 1, 48, 2); /* the JSONL prompts need more than 16 tokens */
        EXPECT(lora_adapter_create(&av, m, NULL), LORA_OK);
        EXPECT(lora_trainer_create(&tv, m, av, &tp), LORA_OK);
        if (tv) {
            progress_log log;
            memset(&log, 0, sizeof log);
            log.validate = 1;
            EXPECT(lora_trainer_train(tv, paths, 2, &rp, log_progress, &log), LORA_OK);
            CHECK(log.calls == 2 && log.bad == 0, "validation run: %d calls, %d bad", log.calls, log.bad);
            rp.validation_fraction = 1.0f;
            EXPECT(lora_trainer_train(tv, paths, 2, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
            /* skip_bad_records: the bad JSONL record is skipped, not an error. */
            const char *bad_jsonl[1] = {path("%s/bad.jsonl", workdir)};
            lora_train_default_params(&rp);
            rp.skip_bad_records = 1;
            EXPECT(lora_trainer_train(tv, bad_jsonl, 1, &rp, NULL, NULL), LORA_OK);
        }
        lora_trainer_free(tv);
        lora_adapter_free(av);
    }
    /* lora_trainer_step misuse. */
    {
        int32_t tokens[2 * 16], labels[2 * 16];
        float loss = 0;
        for (int i = 0; i < 32; i++) tokens[i] = labels[i] = 10 + i;
        EXPECT(lora_trainer_step(NULL, tokens, NULL, 2, 16, &loss), LORA_INVALID_ARGUMENT);
        EXPECT(lora_trainer_step(t, NULL, NULL, 2, 16, &loss), LORA_INVALID_ARGUMENT);
        EXPECT(lora_trainer_step(t, tokens, NULL, 0, 16, &loss), LORA_INVALID_ARGUMENT);
        EXPECT(lora_trainer_step(t, tokens, NULL, -1, 16, &loss), LORA_INVALID_ARGUMENT);
        EXPECT(lora_trainer_step(t, tokens, NULL, 3, 16, &loss), LORA_INVALID_ARGUMENT); /* > batch_size */
        EXPECT(lora_trainer_step(t, tokens, NULL, 1, 17, &loss), LORA_INVALID_ARGUMENT); /* > block_size */
        EXPECT(lora_trainer_step(t, tokens, NULL, 1, 0, &loss), LORA_INVALID_ARGUMENT);
        int before = lora_trainer_get_step(t);
        tokens[5] = TOK_VOCAB;
        EXPECT(lora_trainer_step(t, tokens, NULL, 2, 16, &loss), LORA_INVALID_ARGUMENT);
        tokens[5] = -2;
        EXPECT(lora_trainer_step(t, tokens, NULL, 2, 16, &loss), LORA_INVALID_ARGUMENT);
        tokens[5] = 15;
        labels[7] = TOK_VOCAB + 5;
        EXPECT(lora_trainer_step(t, tokens, labels, 2, 16, &loss), LORA_INVALID_ARGUMENT);
        labels[7] = 15;
        for (int i = 0; i < 32; i++) labels[i] = -100;
        EXPECT(lora_trainer_step(t, tokens, labels, 2, 16, &loss), LORA_INVALID_ARGUMENT);
        CHECK(lora_trainer_get_step(t) == before, "failed steps counted: %d -> %d", before, lora_trainer_get_step(t));
        /* Labels are ids or -100 (transformers' ignore_index); other negatives are out of range. */
        for (int i = 0; i < 32; i++) labels[i] = tokens[i];
        labels[7] = -5;
        EXPECT(lora_trainer_step(t, tokens, labels, 2, 16, &loss), LORA_INVALID_ARGUMENT);
        CHECK(lora_trainer_get_step(t) == before, "a rejected step counted: %d -> %d", before,
              lora_trainer_get_step(t));
    }
    /* Checkpoints: misuse. */
    EXPECT(lora_trainer_save_checkpoint(NULL, workdir), LORA_INVALID_ARGUMENT);
    EXPECT(lora_trainer_save_checkpoint(t, NULL), LORA_INVALID_ARGUMENT);
    EXPECT(lora_trainer_resume(t, NULL), LORA_INVALID_ARGUMENT);
    EXPECT(lora_trainer_resume(NULL, workdir), LORA_INVALID_ARGUMENT);
    EXPECT(lora_trainer_resume(t, path("%s/no-checkpoint", workdir)), LORA_IO_ERROR);
    /* A model without tokenizer cannot train on text. */
    {
        lora_trainer *ta = NULL;
        trainer_params(&tp, 2, 16, 3);
        EXPECT(lora_trainer_create(&ta, other, ad_other, &tp), LORA_OK);
        if (ta) {
            const char *paths[1] = {training_text()};
            EXPECT(lora_trainer_train(ta, paths, 1, NULL, NULL, NULL), LORA_WRONG_STATE);
            lora_trainer_free(ta);
        }
    }
done:
    lora_trainer_free(t);
    lora_adapter_free(ad);
    lora_adapter_free(ad_other);
    lora_model_free(m);
    lora_model_free(other);
}

/* The training batches of lora/expected.safetensors: [2, 12] each. */
/* num_train_epochs sets max_steps from the data; a 0.1.0-sized struct keeps max_steps. */
void test_train_epochs(void) {
    lora_model *m = load_model("gpt2-tok");
    lora_adapter *ad = NULL;
    lora_trainer *t = NULL;
    if (!m) return;
    REQUIRE_OK(lora_adapter_create(&ad, m, NULL));
    lora_trainer_params tp;
    trainer_params(&tp, 2, 16, 1000);
    REQUIRE_OK(lora_trainer_create(&t, m, ad, &tp));
    const char *paths[1] = {training_text()};
    lora_train_params rp;
    lora_train_default_params(&rp);
    rp.num_train_epochs = -1.0f;
    EXPECT(lora_trainer_train(t, paths, 1, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
    rp.num_train_epochs = NAN;
    EXPECT(lora_trainer_train(t, paths, 1, &rp, NULL, NULL), LORA_INVALID_ARGUMENT);
    rp.num_train_epochs = 2.0f;
    progress_log log;
    memset(&log, 0, sizeof log);
    EXPECT(lora_trainer_train(t, paths, 1, &rp, log_progress, &log), LORA_OK);
    /* 5 short lines in 16-token blocks: a handful of sequences, 2 epochs of batches of 2. */
    CHECK(log.bad == 0 && log.max_steps >= 2 && log.max_steps < 50 && lora_trainer_get_step(t) == log.max_steps,
          "epochs: max_steps %d, step %d", log.max_steps, lora_trainer_get_step(t));
    /* The 0.1.0 struct (without num_train_epochs) trains to the max_steps the trainer has. */
    lora_train_default_params(&rp);
    rp.struct_size = (uint32_t)offsetof(lora_train_params, num_train_epochs);
    rp.num_train_epochs = 100.0f; /* beyond struct_size: not read */
    int32_t before = lora_trainer_get_step(t);
    EXPECT(lora_trainer_train(t, paths, 1, &rp, NULL, NULL), LORA_OK);
    CHECK(lora_trainer_get_step(t) == before, "a finished run took more steps: %d", lora_trainer_get_step(t));
done:
    lora_trainer_free(t);
    lora_adapter_free(ad);
    lora_model_free(m);
}

#define TRAIN_B 2
#define TRAIN_T 12

static int load_batches(st_file *ref, int32_t batches[][TRAIN_B * TRAIN_T], int count) {
    for (int i = 0; i < count; i++) {
        char name[64];
        snprintf(name, sizeof name, "train.batch%d.ids", i);
        size_t n = 0;
        int32_t *ids = st_ids(ref, name, &n);
        if (!ids || n != TRAIN_B * TRAIN_T) {
            free(ids);
            return 0;
        }
        memcpy(batches[i], ids, sizeof batches[i]);
        free(ids);
    }
    return 1;
}

void test_training_steps(void) {
    st_file ref;
    memset(&ref, 0, sizeof ref);
    lora_model *m = NULL;
    lora_adapter *ad = NULL;
    lora_trainer *t = NULL;
    int32_t batches[6][TRAIN_B * TRAIN_T];
    if (!st_open(&ref, path("%s/lora/expected.safetensors", fixtures)) || !load_batches(&ref, batches, 6)) {
        CHECK(0, "cannot read the training batches of lora/expected.safetensors");
        goto done;
    }
    m = load_model("gpt2-a");
    if (!m) goto done;

    /* LoRA: the loss falls over a few steps on a repeated batch. */
    lora_adapter_params ap;
    lora_adapter_default_params(&ap);
    ap.r = 4;
    ap.target_modules = "c_attn,c_proj,c_fc";
    ap.seed = 3;
    REQUIRE_OK(lora_adapter_create(&ad, m, &ap));
    lora_trainer_params tp;
    trainer_params(&tp, TRAIN_B, TRAIN_T, 50);
    REQUIRE_OK(lora_trainer_create(&t, m, ad, &tp));
    float losses[6];
    for (int i = 0; i < 6; i++) {
        losses[i] = NAN;
        REQUIRE_OK(lora_trainer_step(t, batches[0], NULL, TRAIN_B, TRAIN_T, &losses[i]));
    }
    CHECK(isfinite(losses[0]) && losses[5] < losses[0] - 0.01f, "LoRA loss %g -> %g does not fall", losses[0],
          losses[5]);
    CHECK(lora_trainer_get_step(t) == 6, "step %d after 6 steps", lora_trainer_get_step(t));
    {
        /* Labels: -100 masks a position; NULL labels equal labels = tokens. */
        int32_t labels[TRAIN_B * TRAIN_T];
        memcpy(labels, batches[0], sizeof labels);
        labels[3] = -100;
        float l1 = 0;
        EXPECT(lora_trainer_step(t, batches[0], labels, TRAIN_B, TRAIN_T, &l1), LORA_OK);
        CHECK(isfinite(l1), "masked loss %g", l1);
        /* A shorter sequence and a smaller batch fit. */
        EXPECT(lora_trainer_step(t, batches[0], NULL, 1, TRAIN_T - 4, NULL), LORA_OK);
    }
    lora_trainer_free(t);
    t = NULL;
    lora_adapter_free(ad);
    ad = NULL;

    /* A learning rate that blows the weights up: the next step reports
     * LORA_NUMERICAL_ERROR and is not counted. */
    lora_adapter_default_params(&ap);
    ap.r = 4;
    REQUIRE_OK(lora_adapter_create(&ad, m, &ap));
    trainer_params(&tp, TRAIN_B, TRAIN_T, 50);
    tp.learning_rate = 1e30f;
    tp.max_grad_norm = 0; /* no clipping */
    REQUIRE_OK(lora_trainer_create(&t, m, ad, &tp));
    {
        lora_status s = LORA_OK;
        int k = 0;
        for (; k < 4 && s == LORA_OK; k++) s = lora_trainer_step(t, batches[2], NULL, TRAIN_B, TRAIN_T, NULL);
        expect_status(__FILE__, __LINE__, s, LORA_NUMERICAL_ERROR, "lora_trainer_step with learning_rate 1e30");
        CHECK(lora_trainer_get_step(t) == k - 1, "step %d after a numerical error at call %d", lora_trainer_get_step(t),
              k);
        EXPECT(lora_trainer_step(t, batches[2], NULL, TRAIN_B, TRAIN_T, NULL), LORA_NUMERICAL_ERROR);
    }
    lora_trainer_free(t);
    t = NULL;
    lora_adapter_free(ad);
    ad = NULL;

    /* Full fine-tuning (adapter NULL). */
    trainer_params(&tp, TRAIN_B, TRAIN_T, 50);
    tp.learning_rate = 1e-3f;
    REQUIRE_OK(lora_trainer_create(&t, m, NULL, &tp));
    for (int i = 0; i < 4; i++) {
        losses[i] = NAN;
        REQUIRE_OK(lora_trainer_step(t, batches[1], NULL, TRAIN_B, TRAIN_T, &losses[i]));
    }
    CHECK(isfinite(losses[0]) && losses[3] < losses[0] - 0.01f, "full fine-tuning loss %g -> %g does not fall",
          losses[0], losses[3]);
done:
    lora_trainer_free(t);
    lora_adapter_free(ad);
    lora_model_free(m);
    st_close(&ref);
}

/* Runs steps [from, to) of the batch sequence; losses[i] for step i. */
static int run_steps(lora_trainer *t, int32_t batches[][TRAIN_B * TRAIN_T], int from, int to, float *losses) {
    for (int i = from; i < to; i++) {
        lora_status s = lora_trainer_step(t, batches[i], NULL, TRAIN_B, TRAIN_T, &losses[i]);
        if (s != LORA_OK) {
            CHECK(0, "lora_trainer_step %d: %s: %s", i, lora_status_string(s), lora_last_error());
            return 0;
        }
    }
    return 1;
}

void test_checkpoint_resume(void) {
    st_file ref;
    memset(&ref, 0, sizeof ref);
    lora_model *m1 = NULL, *m2 = NULL;
    lora_adapter *a1 = NULL, *a2 = NULL, *a3 = NULL;
    lora_trainer *t1 = NULL, *t2 = NULL, *t3 = NULL;
    int32_t batches[6][TRAIN_B * TRAIN_T];
    float la[6], lb[6];
    float *logits1 = NULL, *logits2 = NULL;
    const char *ckdir = path("%s/checkpoints", workdir);
    if (!st_open(&ref, path("%s/lora/expected.safetensors", fixtures)) || !load_batches(&ref, batches, 6)) {
        CHECK(0, "cannot read the training batches of lora/expected.safetensors");
        goto done;
    }
    m1 = load_model("gpt2-a");
    m2 = load_model("gpt2-a");
    if (!m1 || !m2) goto done;
    lora_adapter_params ap;
    lora_adapter_default_params(&ap);
    ap.r = 4;
    ap.target_modules = "c_attn,c_fc";
    ap.seed = 11;
    lora_trainer_params tp;
    trainer_params(&tp, TRAIN_B, TRAIN_T, 10);
    tp.lr_scheduler = LORA_SCHEDULER_COSINE;
    tp.warmup_steps = 2;

    /* Run 1: 3 steps, checkpoint, 3 more steps. */
    REQUIRE_OK(lora_adapter_create(&a1, m1, &ap));
    REQUIRE_OK(lora_trainer_create(&t1, m1, a1, &tp));
    if (!run_steps(t1, batches, 0, 3, la)) goto done;
    REQUIRE_OK(lora_trainer_save_checkpoint(t1, ckdir));
    const char *ck = path("%s/checkpoint-3", ckdir);
    CHECK(is_dir(ck), "%s was not written", ck);
    if (!run_steps(t1, batches, 3, 6, la)) goto done;

    /* Run 2: another model and adapter (other seed), resumed at step 3. */
    ap.seed = 999;
    REQUIRE_OK(lora_adapter_create(&a2, m2, &ap));
    REQUIRE_OK(lora_trainer_create(&t2, m2, a2, &tp));
    REQUIRE_OK(lora_trainer_resume(t2, ck));
    CHECK(lora_trainer_get_step(t2) == 3, "resumed step %d", lora_trainer_get_step(t2));
    if (!run_steps(t2, batches, 3, 6, lb)) goto done;
    int same = 1;
    for (int i = 3; i < 6; i++) same &= la[i] == lb[i];
    CHECK(same, "resumed losses differ: %.9g %.9g %.9g vs %.9g %.9g %.9g", la[3], la[4], la[5], lb[3], lb[4], lb[5]);
    {
        const size_t n = TRAIN_T * A_VOCAB;
        logits1 = malloc(n * sizeof *logits1);
        logits2 = malloc(n * sizeof *logits2);
        EXPECT(lora_logits(m1, batches[0], TRAIN_T, logits1, n), LORA_OK);
        EXPECT(lora_logits(m2, batches[0], TRAIN_T, logits2, n), LORA_OK);
        CHECK(max_abs_diff(logits1, logits2, n) == 0.0f, "resumed weights differ by %g",
              max_abs_diff(logits1, logits2, n));
    }
    /* Another shape (r = 2) or other settings cannot resume it. */
    lora_trainer_free(t2);
    t2 = NULL;
    lora_adapter_free(a2);
    a2 = NULL;
    ap.r = 2;
    REQUIRE_OK(lora_adapter_create(&a3, m2, &ap));
    REQUIRE_OK(lora_trainer_create(&t3, m2, a3, &tp));
    EXPECT(lora_trainer_resume(t3, ck), LORA_INVALID_FILE);
    CHECK(lora_trainer_get_step(t3) == 0, "a failed resume moved the step to %d", lora_trainer_get_step(t3));
    lora_trainer_free(t3);
    t3 = NULL;
    lora_adapter_free(a3);
    a3 = NULL;
    ap.r = 4;
    REQUIRE_OK(lora_adapter_create(&a3, m2, &ap));
    tp.batch_size = 1;
    REQUIRE_OK(lora_trainer_create(&t3, m2, a3, &tp));
    EXPECT(lora_trainer_resume(t3, ck), LORA_INVALID_FILE);
done:
    free(logits1);
    free(logits2);
    lora_trainer_free(t3);
    lora_trainer_free(t2);
    lora_trainer_free(t1);
    lora_adapter_free(a3);
    lora_adapter_free(a2);
    lora_adapter_free(a1);
    lora_model_free(m2);
    lora_model_free(m1);
    st_close(&ref);
}
