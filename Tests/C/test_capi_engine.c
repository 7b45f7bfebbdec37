/*
 * test_capi_engine.c — the batched engine (lora_engine): mixed adapter sets,
 * joins, a cancellation, a callback stop and a freed adapter against
 * lora_generate alone; bad input; two threads submitting and cancelling while
 * a third steps.
 */
#include "test_capi.h"

#include <sched.h>

/* Collects streamed tokens (as test_capi_generation.c's collector). */
typedef struct collect {
    char text[4096];
    size_t len;
    int calls;
    int stop_after; /* return non-zero at this call (0: never) */
    int32_t tokens[256];
} collect;

static int32_t collect_piece(int32_t token, const char *piece, size_t piece_len, void *user_data) {
    collect *c = user_data;
    if (c->calls < 256) c->tokens[c->calls] = token;
    c->calls++;
    if (piece_len > 0 && (piece == NULL || c->len + piece_len >= sizeof c->text)) return 1;
    if (piece_len > 0) memcpy(c->text + c->len, piece, piece_len);
    c->len += piece_len;
    c->text[c->len] = 0;
    return c->stop_after > 0 && c->calls >= c->stop_after;
}

/* ---- The batched engine ------------------------------------------------- */

/* A request of the engine test: its prompt, adapter set and sampling. */
typedef struct {
    int32_t prompt[40];
    size_t n_prompt;
    int set;
    int sampled;
    lora_request_id id;
    collect streamed;
} engine_job;

/* Generates alone through attach/detach: what the engine must reproduce. */
static lora_status solo_generate(lora_model *m, const lora_adapter_use *set, size_t n_set, const int32_t *prompt,
                                 size_t n_prompt, const lora_sampling_params *sp, int32_t *out, size_t cap, size_t *n) {
    for (size_t k = 0; k < n_set; k++) lora_model_attach(m, (lora_adapter *)set[k].adapter, set[k].scale);
    lora_status st = lora_generate_tokens(m, prompt, n_prompt, sp, NULL, NULL, out, cap, n);
    for (size_t k = 0; k < n_set; k++) lora_model_detach(m, (lora_adapter *)set[k].adapter);
    return st;
}

static lora_engine *reentrant_engine;
static lora_status reentrant_status;
static int32_t step_from_callback(int32_t token, const char *piece, size_t piece_len, void *user_data) {
    (void)token, (void)piece, (void)piece_len, (void)user_data;
    reentrant_status = lora_engine_step(reentrant_engine, NULL, 0, NULL, NULL);
    return 0;
}

void test_engine(void) {
    lora_model *m = load_model("gpt2-tok");
    lora_adapter *a = NULL, *b = NULL, *c = NULL;
    lora_engine *e = NULL;
    if (!m) return;
    lora_adapter_params ap;
    lora_adapter_default_params(&ap);
    ap.target_modules = "c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj";
    ap.init = LORA_INIT_RANDOM;
    ap.r = 4;
    ap.seed = 1;
    REQUIRE_OK(lora_adapter_create(&a, m, &ap));
    ap.r = 8;
    ap.seed = 2;
    REQUIRE_OK(lora_adapter_create(&b, m, &ap));
    ap.seed = 3;
    REQUIRE_OK(lora_adapter_create(&c, m, &ap));

    /* The four adapter sets: none, a, b*1.5, a + b*0.5. */
    lora_adapter_use sets[4][2] = {{{NULL, 0}}, {{a, 1.0f}}, {{b, 1.5f}}, {{a, 1.0f}, {b, 0.5f}}};
    size_t set_sizes[4] = {0, 1, 1, 2};

    lora_engine_params ep;
    lora_engine_default_params(&ep);
    CHECK(ep.struct_size == sizeof ep && ep.max_sequences == 16 && ep.max_tokens_per_step == 512 &&
              ep.context_per_sequence == 0,
          "engine defaults");
    ep.max_sequences = 4;
    ep.max_tokens_per_step = 3;
    lora_engine *bad = SENTINEL(lora_engine);
    EXPECT(lora_engine_create(&bad, m, &ep), LORA_INVALID_ARGUMENT);
    CHECK(bad == NULL, "a failed create leaves NULL");
    ep.max_tokens_per_step = 16;
    REQUIRE_OK(lora_engine_create(&e, m, &ep));

    lora_sampling_params greedy, sampled;
    lora_sampling_default_params(&greedy);
    greedy.temperature = 0;
    greedy.max_new_tokens = 6;
    greedy.stop_at_eos = 0;
    sampled = greedy;
    sampled.temperature = 0.9f;
    sampled.top_k = 30;

    enum { N_JOBS = 9 };
    static engine_job jobs[N_JOBS];
    memset(jobs, 0, sizeof jobs);
    lora_request rq;
    for (int j = 0; j < N_JOBS; j++) {
        jobs[j].n_prompt = 2 + (size_t)(j * 5) % 30;
        for (size_t t = 0; t < jobs[j].n_prompt; t++) jobs[j].prompt[t] = (int32_t)((j * 131 + t * 17 + 3) % 1000);
        jobs[j].set = j % 4;
        jobs[j].sampled = j % 3 == 1;
    }
    /* Five start together (one queues: 4 slots), four join while those decode. */
    for (int j = 0; j < N_JOBS; j++) {
        if (j == 5) {
            size_t nf = 99, nt = 99;
            EXPECT(lora_engine_step(e, NULL, 0, &nf, &nt), LORA_OK);
            EXPECT(lora_engine_step(e, NULL, 0, &nf, &nt), LORA_OK);
        }
        lora_request_default_params(&rq);
        rq.tokens = jobs[j].prompt;
        rq.n_tokens = jobs[j].n_prompt;
        rq.adapters = sets[jobs[j].set];
        rq.n_adapters = set_sizes[jobs[j].set];
        lora_sampling_params sp = jobs[j].sampled ? sampled : greedy;
        sp.seed = 100 + (uint64_t)j;
        rq.sampling = &sp;
        rq.callback = collect_piece;
        rq.user_data = &jobs[j].streamed;
        REQUIRE_OK(lora_engine_submit(e, &rq, &jobs[j].id));
    }
    /* One more, cancelled mid-way; one whose callback stops it; one whose adapter is freed while it waits. */
    lora_request_id cancelled = 0, stopped = 0, orphan = 0;
    collect stop_after_two;
    memset(&stop_after_two, 0, sizeof stop_after_two);
    stop_after_two.stop_after = 2;
    int32_t orphan_want[16];
    size_t n_orphan_want = 0;
    {
        lora_request_default_params(&rq);
        rq.tokens = jobs[0].prompt;
        rq.n_tokens = 5;
        rq.adapters = sets[3];
        rq.n_adapters = 2;
        lora_sampling_params sp = greedy;
        sp.max_new_tokens = 40;
        rq.sampling = &sp;
        REQUIRE_OK(lora_engine_submit(e, &rq, &cancelled));
        rq.sampling = &greedy;
        rq.callback = collect_piece;
        rq.user_data = &stop_after_two;
        REQUIRE_OK(lora_engine_submit(e, &rq, &stopped));
        lora_adapter_use own = {c, 0.75f};
        REQUIRE_OK(
            solo_generate(m, &own, 1, jobs[1].prompt, jobs[1].n_prompt, &greedy, orphan_want, 16, &n_orphan_want));
        lora_request_default_params(&rq);
        rq.tokens = jobs[1].prompt;
        rq.n_tokens = jobs[1].n_prompt;
        rq.adapters = &own;
        rq.n_adapters = 1;
        rq.sampling = &greedy;
        REQUIRE_OK(lora_engine_submit(e, &rq, &orphan));
        lora_adapter_free(c); /* the request keeps it alive */
        c = NULL;
    }
    lora_request_info info;
    info.struct_size = sizeof info;
    EXPECT(lora_engine_request_info(e, orphan, &info), LORA_OK);
    CHECK(info.state == LORA_REQUEST_QUEUED, "a request beyond the pool queues (state %d)", info.state);
    int32_t toks[64];
    size_t n = 0;
    EXPECT(lora_engine_request_tokens(e, orphan, toks, 64, &n), LORA_WRONG_STATE);
    lora_request_id finished[16];
    int steps = 0, was_running = 0;
    size_t total_finished = 0;
    for (;;) {
        size_t nf = 0, nt = 0;
        REQUIRE_OK(lora_engine_step(e, finished, 16, &nf, &nt));
        total_finished += nf;
        steps++;
        /* Cancelled mid-way, once it has two tokens. */
        EXPECT(lora_engine_request_info(e, cancelled, &info), LORA_OK);
        if (!was_running && info.state == LORA_REQUEST_RUNNING && info.n_tokens >= 2) {
            was_running = 1;
            EXPECT(lora_engine_cancel(e, cancelled), LORA_OK);
            /* Between steps, a cancelled request ends at once (no step reports it). */
            EXPECT(lora_engine_request_info(e, cancelled, &info), LORA_OK);
            CHECK(info.state == LORA_REQUEST_CANCELLED, "state after cancel %d", info.state);
        }
        if (nf == 0 && nt == 0) {
            EXPECT(lora_engine_request_info(e, orphan, &info), LORA_OK);
            if (info.state >= LORA_REQUEST_FINISHED) break;
        }
        if (steps > 1000) break;
    }
    CHECK(was_running && total_finished == N_JOBS + 2,
          "%zu requests reported finished in %d steps (cancelled while running: %d)", total_finished, steps,
          was_running);
    for (int j = 0; j < N_JOBS; j++) {
        int32_t want[64];
        size_t n_want = 0;
        lora_sampling_params sp = jobs[j].sampled ? sampled : greedy;
        sp.seed = 100 + (uint64_t)j;
        REQUIRE_OK(solo_generate(m, sets[jobs[j].set], set_sizes[jobs[j].set], jobs[j].prompt, jobs[j].n_prompt, &sp,
                                 want, 64, &n_want));
        EXPECT(lora_engine_request_tokens(e, jobs[j].id, toks, 64, &n), LORA_OK);
        CHECK(n == n_want && memcmp(toks, want, n * sizeof *toks) == 0,
              "request %d (set %d): engine tokens differ from solo", j, jobs[j].set);
        CHECK(jobs[j].streamed.calls == (int)n && memcmp(jobs[j].streamed.tokens, want, n * sizeof *toks) == 0,
              "request %d: streamed tokens differ", j);
        EXPECT(lora_engine_request_info(e, jobs[j].id, &info), LORA_OK);
        CHECK(info.state == LORA_REQUEST_FINISHED && info.stop_reason == LORA_STOP_MAX_TOKENS &&
                  info.status == LORA_OK && info.n_tokens == (int64_t)n,
              "request %d info", j);
    }
    EXPECT(lora_engine_request_info(e, cancelled, &info), LORA_OK);
    CHECK(info.state == LORA_REQUEST_CANCELLED && info.stop_reason == LORA_STOP_CANCELLED && info.n_tokens >= 2 &&
              info.n_tokens < 40,
          "cancelled request: state %d, %lld tokens", info.state, (long long)info.n_tokens);
    EXPECT(lora_engine_request_info(e, stopped, &info), LORA_OK);
    CHECK(info.state == LORA_REQUEST_FINISHED && info.status == LORA_ABORTED &&
              info.stop_reason == LORA_STOP_CALLBACK && info.n_tokens == 2,
          "callback-stopped request: status %d, %lld tokens", info.status, (long long)info.n_tokens);
    EXPECT(lora_engine_request_tokens(e, orphan, toks, 64, &n), LORA_OK);
    CHECK(n == n_orphan_want && memcmp(toks, orphan_want, n * sizeof *toks) == 0, "a freed adapter's request differs");
    EXPECT(lora_engine_request_tokens(e, orphan, toks, 1, &n), LORA_BUFFER_TOO_SMALL);

    /* Errors. */
    EXPECT(lora_engine_cancel(e, cancelled), LORA_WRONG_STATE);
    EXPECT(lora_engine_cancel(e, 123456), LORA_INVALID_ARGUMENT);
    EXPECT(lora_engine_request_info(e, 123456, &info), LORA_INVALID_ARGUMENT);
    EXPECT(lora_engine_release(e, orphan), LORA_OK);
    EXPECT(lora_engine_request_info(e, orphan, &info), LORA_INVALID_ARGUMENT);
    lora_request_id id = 0;
    EXPECT(lora_engine_submit(e, NULL, &id), LORA_INVALID_ARGUMENT);
    EXPECT(lora_engine_submit(NULL, &rq, &id), LORA_INVALID_ARGUMENT);
    lora_request_default_params(&rq);
    EXPECT(lora_engine_submit(e, &rq, &id), LORA_INVALID_ARGUMENT); /* no prompt */
    rq.tokens = jobs[0].prompt;
    rq.n_tokens = 64; /* no room for a new token in n_positions 64 */
    EXPECT(lora_engine_submit(e, &rq, &id), LORA_INVALID_ARGUMENT);
    rq.n_tokens = 3;
    lora_adapter_use nan_scale = {a, NAN};
    rq.adapters = &nan_scale;
    rq.n_adapters = 1;
    EXPECT(lora_engine_submit(e, &rq, &id), LORA_INVALID_ARGUMENT);
    nan_scale.scale = INFINITY;
    EXPECT(lora_engine_submit(e, &rq, &id), LORA_INVALID_ARGUMENT);
    rq.adapters = NULL;
    EXPECT(lora_engine_submit(e, &rq, &id), LORA_INVALID_ARGUMENT); /* n_adapters 1, adapters NULL */
    lora_model *other = load_model("gpt2-a");
    if (other) {
        lora_adapter *foreign = NULL;
        lora_adapter_default_params(&ap);
        if (lora_adapter_create(&foreign, other, &ap) == LORA_OK) {
            lora_model_info mi, oi;
            mi.struct_size = oi.struct_size = sizeof mi;
            lora_model_get_info(m, &mi);
            lora_model_get_info(other, &oi);
            lora_adapter_use f = {foreign, 1.0f};
            rq.adapters = &f;
            if (mi.n_embd != oi.n_embd) EXPECT(lora_engine_submit(e, &rq, &id), LORA_INVALID_ARGUMENT);
            lora_adapter_free(foreign);
        }
        lora_model_free(other);
    }
    /* A text prompt gives lora_generate's text; stepping from a callback is refused. */
    {
        char want[1024], got[1024];
        size_t needed = 0;
        REQUIRE_OK(lora_generate(m, "Hello world", &greedy, NULL, NULL, want, sizeof want, &needed));
        lora_request_default_params(&rq);
        rq.prompt = "Hello world";
        rq.sampling = &greedy;
        rq.callback = step_from_callback;
        reentrant_engine = e;
        reentrant_status = LORA_OK;
        REQUIRE_OK(lora_engine_submit(e, &rq, &id));
        REQUIRE_OK(lora_engine_run(e));
        EXPECT(reentrant_status, LORA_WRONG_STATE);
        EXPECT(lora_engine_request_text(e, id, got, sizeof got, &needed), LORA_OK);
        CHECK(strcmp(got, want) == 0, "engine text \"%s\" != lora_generate's \"%s\"", got, want);
    }
    /* Freeing an engine with requests still queued or running is fine. */
    lora_request_default_params(&rq);
    rq.tokens = jobs[2].prompt;
    rq.n_tokens = jobs[2].n_prompt;
    REQUIRE_OK(lora_engine_submit(e, &rq, &id));
    REQUIRE_OK(lora_engine_step(e, NULL, 0, NULL, NULL));
done:
    lora_engine_free(e);
    lora_engine_free(NULL);
    lora_adapter_free(a);
    lora_adapter_free(b);
    lora_adapter_free(c);
    lora_model_free(m);
}

/* Two threads submit and cancel while a third steps the engine. */
typedef struct {
    lora_engine *engine;
    pthread_mutex_t lock;
    int submitters_done;
    lora_request_id ids[2][6];
    int32_t prompts[2][6][3];
    int submit_errors;
} engine_threads;

typedef struct {
    engine_threads *t;
    int k; /* this submitter's row of ids and prompts */
} engine_submitter_arg;

static void *engine_submitter(void *arg) {
    engine_threads *t = ((engine_submitter_arg *)arg)->t;
    int k = ((engine_submitter_arg *)arg)->k;
    lora_sampling_params sp;
    lora_sampling_default_params(&sp);
    sp.temperature = 0;
    sp.max_new_tokens = 4;
    sp.stop_at_eos = 0;
    for (int i = 0; i < 6; i++) {
        lora_request rq;
        lora_request_default_params(&rq);
        t->prompts[k][i][0] = 10 * k + i + 1;
        t->prompts[k][i][1] = 7;
        t->prompts[k][i][2] = 100 + i;
        rq.tokens = t->prompts[k][i];
        rq.n_tokens = 3;
        rq.sampling = &sp;
        lora_request_id id = 0;
        if (lora_engine_submit(t->engine, &rq, &id) != LORA_OK) {
            pthread_mutex_lock(&t->lock);
            t->submit_errors++;
            pthread_mutex_unlock(&t->lock);
        }
        t->ids[k][i] = id;
        if (i % 3 == 0) lora_engine_cancel(t->engine, id); /* may race with its end: OK or LORA_WRONG_STATE */
    }
    pthread_mutex_lock(&t->lock);
    t->submitters_done++;
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

static void *engine_stepper(void *arg) {
    engine_threads *t = arg;
    for (;;) {
        size_t nf = 0, nt = 0;
        lora_engine_step(t->engine, NULL, 0, &nf, &nt);
        /* An idle step gives the submitters the core: under valgrind, which
         * runs one thread at a time, spinning here took this test 226 s
         * (release liblora.so); with the yield, 0.4 s. */
        if (nf == 0 && nt == 0) sched_yield();
        pthread_mutex_lock(&t->lock);
        int done = t->submitters_done == 2;
        pthread_mutex_unlock(&t->lock);
        if (done && nf == 0 && nt == 0) {
            /* Nothing ran: idle once every request has ended. */
            int idle = 1;
            for (int k = 0; k < 2 && idle; k++)
                for (int i = 0; i < 6 && idle; i++) {
                    lora_request_info info;
                    info.struct_size = sizeof info;
                    if (lora_engine_request_info(t->engine, t->ids[k][i], &info) == LORA_OK &&
                        info.state < LORA_REQUEST_FINISHED)
                        idle = 0;
                }
            if (idle) return NULL;
        }
    }
}

void test_engine_threads(void) {
    lora_model *m = load_model("gpt2-tok");
    lora_engine *e = NULL;
    if (!m) return;
    lora_engine_params ep;
    lora_engine_default_params(&ep);
    ep.max_sequences = 4;
    ep.max_tokens_per_step = 16;
    REQUIRE_OK(lora_engine_create(&e, m, &ep));
    static engine_threads t;
    memset(&t, 0, sizeof t);
    t.engine = e;
    pthread_mutex_init(&t.lock, NULL);
    pthread_t stepper, sub[2];
    pthread_create(&stepper, NULL, engine_stepper, &t);
    engine_submitter_arg args[2] = {{&t, 0}, {&t, 1}};
    pthread_create(&sub[0], NULL, engine_submitter, &args[0]);
    pthread_create(&sub[1], NULL, engine_submitter, &args[1]);
    pthread_join(sub[0], NULL);
    pthread_join(sub[1], NULL);
    pthread_join(stepper, NULL);
    pthread_mutex_destroy(&t.lock);
    CHECK(t.submit_errors == 0, "%d submits failed", t.submit_errors);
    lora_sampling_params sp;
    lora_sampling_default_params(&sp);
    sp.temperature = 0;
    sp.max_new_tokens = 4;
    sp.stop_at_eos = 0;
    int finished = 0;
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 6; i++) {
            lora_request_info info;
            info.struct_size = sizeof info;
            EXPECT(lora_engine_request_info(e, t.ids[k][i], &info), LORA_OK);
            CHECK(info.state == LORA_REQUEST_FINISHED || info.state == LORA_REQUEST_CANCELLED, "request %d/%d state %d",
                  k, i, info.state);
            if (i % 3 != 0)
                CHECK(info.state == LORA_REQUEST_FINISHED, "uncancelled request %d/%d did not finish", k, i);
            if (info.state != LORA_REQUEST_FINISHED) continue;
            finished++;
            int32_t got[8], want[8];
            size_t n_got = 0, n_want = 0;
            EXPECT(lora_engine_request_tokens(e, t.ids[k][i], got, 8, &n_got), LORA_OK);
            EXPECT(lora_generate_tokens(m, t.prompts[k][i], 3, &sp, NULL, NULL, want, 8, &n_want), LORA_OK);
            CHECK(n_got == n_want && memcmp(got, want, n_got * sizeof *got) == 0, "request %d/%d differs from solo", k,
                  i);
        }
    }
    CHECK(finished >= 8, "only %d requests finished", finished);
done:
    lora_engine_free(e);
    lora_model_free(m);
}

/* lora_engine_step_report: every token a request got is reported once, in
 * the step that produced it; a short buffer gets the first ids and the full
 * count. */
void test_engine_step_report(void) {
    lora_model *m = NULL;
    lora_engine *e = NULL;
    REQUIRE_OK(lora_model_load(&m, path("%s/gpt2-a", fixtures), NULL));
    lora_engine_params ep;
    lora_engine_default_params(&ep);
    ep.max_sequences = 2;
    REQUIRE_OK(lora_engine_create(&e, m, &ep));
    enum { N = 3 };
    lora_request_id ids[N];
    int32_t prompt[4] = {5, 17, 2, 9};
    for (int j = 0; j < N; j++) {
        lora_sampling_params sp;
        lora_sampling_default_params(&sp);
        sp.temperature = 0;
        sp.stop_at_eos = 0;
        sp.max_new_tokens = 2 + 2 * j;
        lora_request rq;
        lora_request_default_params(&rq);
        rq.tokens = prompt;
        rq.n_tokens = 2 + (size_t)j;
        rq.sampling = &sp;
        REQUIRE_OK(lora_engine_submit(e, &rq, &ids[j]));
    }
    int64_t got[N] = {0};
    size_t ended = 0, steps = 0;
    for (;;) {
        lora_request_id produced[2], finished[2];
        size_t np = 99, nf = 99;
        REQUIRE_OK(lora_engine_step_report(e, produced, 2, &np, finished, 2, &nf));
        CHECK(np <= 2 && nf <= 2, "a step of a 2-sequence engine reported %zu produced, %zu finished", np, nf);
        for (size_t k = 0; k < np && k < 2; k++) {
            int known = 0;
            for (int j = 0; j < N; j++)
                if (produced[k] == ids[j]) got[j]++, known = 1;
            CHECK(known, "produced id %lld is not a request", (long long)produced[k]);
            for (size_t l = 0; l < k; l++) CHECK(produced[l] != produced[k], "an id produced twice in one step");
        }
        ended += nf;
        if (np == 0 && nf == 0) break;
        if (++steps > 100) break;
    }
    CHECK(ended == N, "%zu requests ended", ended);
    for (int j = 0; j < N; j++) {
        lora_request_info info;
        info.struct_size = sizeof info;
        REQUIRE_OK(lora_engine_request_info(e, ids[j], &info));
        CHECK(got[j] == info.n_tokens && got[j] == 2 + 2 * j, "request %d: %lld tokens reported, %lld generated", j,
              (long long)got[j], (long long)info.n_tokens);
    }
    /* A capacity of 1 with two running: the count is the whole, one id written. */
    lora_sampling_params sp;
    lora_sampling_default_params(&sp);
    sp.temperature = 0;
    sp.stop_at_eos = 0;
    sp.max_new_tokens = 3;
    lora_request rq;
    lora_request_default_params(&rq);
    rq.tokens = prompt;
    rq.n_tokens = 3;
    rq.sampling = &sp;
    lora_request_id a = 0, b = 0, one[2] = {0, -7};
    REQUIRE_OK(lora_engine_submit(e, &rq, &a));
    REQUIRE_OK(lora_engine_submit(e, &rq, &b));
    size_t np = 0;
    REQUIRE_OK(lora_engine_step_report(e, one, 1, &np, NULL, 0, NULL));
    CHECK(np == 2 && (one[0] == a || one[0] == b) && one[1] == -7, "capacity 1: n_produced %zu, ids %lld %lld", np,
          (long long)one[0], (long long)one[1]);
    EXPECT(lora_engine_step_report(e, NULL, 3, &np, NULL, 0, NULL), LORA_INVALID_ARGUMENT);
    REQUIRE_OK(lora_engine_run(e));
    {
        /* An adapter freed while its request decodes: the request keeps it
         * to its end (the same tokens as alone), the handle is refused. */
        lora_adapter *ad = NULL;
        REQUIRE_OK(lora_adapter_load(&ad, m, path("%s/lora/all", fixtures)));
        lora_adapter_use use = {ad, 0.75f};
        sp.max_new_tokens = 8;
        int32_t want[8], got8[8];
        size_t n_want = 0, n_got = 0;
        REQUIRE_OK(solo_generate(m, &use, 1, prompt, 4, &sp, want, 8, &n_want));
        rq.n_tokens = 4;
        rq.adapters = &use;
        rq.n_adapters = 1;
        lora_request_id r = 0;
        REQUIRE_OK(lora_engine_submit(e, &rq, &r));
        REQUIRE_OK(lora_engine_step(e, NULL, 0, NULL, NULL));
        REQUIRE_OK(lora_engine_step(e, NULL, 0, NULL, NULL));
        lora_request_info info;
        info.struct_size = sizeof info;
        REQUIRE_OK(lora_engine_request_info(e, r, &info));
        CHECK(info.state == LORA_REQUEST_RUNNING && info.n_tokens >= 1, "state %d, %lld tokens before the free",
              info.state, (long long)info.n_tokens);
        lora_adapter_free(ad);
        lora_request_id refused = 0;
        EXPECT(lora_engine_submit(e, &rq, &refused), LORA_INVALID_ARGUMENT); /* the freed handle */
        REQUIRE_OK(lora_engine_run(e));
        REQUIRE_OK(lora_engine_request_tokens(e, r, got8, 8, &n_got));
        CHECK(n_got == n_want && n_want == 8 && memcmp(got8, want, sizeof want) == 0,
              "tokens after freeing the adapter mid-decode differ from solo (%zu vs %zu)", n_got, n_want);
    }
done:
    lora_engine_free(e);
    lora_model_free(m);
}

/* Writes a one-layer GPT-2 (vocab 2000, n_embd 16) with the fixture
 * tokenizer (1201 tokens) beside it; the extra ids' embeddings are zero, so
 * their logits are 0 and greedy decoding never picks them (some real id
 * scores above 0), while sampling at a high temperature soon does. */
static int write_extra_vocab_model(const char *dir) {
    enum { V = 2000, E = 16, P = 32, F = 4 * E, REAL = 1201 };
    static const struct {
        const char *name;
        int rows, cols; /* cols 0: a vector of `rows` */
        int init;       /* 0 random, 1 ones, 2 zeros */
    } t[] = {
        {"wte.weight", V, E, 0},
        {"wpe.weight", P, E, 0},
        {"h.0.ln_1.weight", E, 0, 1},
        {"h.0.ln_1.bias", E, 0, 2},
        {"h.0.attn.c_attn.weight", E, 3 * E, 0},
        {"h.0.attn.c_attn.bias", 3 * E, 0, 2},
        {"h.0.attn.c_proj.weight", E, E, 0},
        {"h.0.attn.c_proj.bias", E, 0, 2},
        {"h.0.ln_2.weight", E, 0, 1},
        {"h.0.ln_2.bias", E, 0, 2},
        {"h.0.mlp.c_fc.weight", E, F, 0},
        {"h.0.mlp.c_fc.bias", F, 0, 2},
        {"h.0.mlp.c_proj.weight", F, E, 0},
        {"h.0.mlp.c_proj.bias", E, 0, 2},
        {"ln_f.weight", E, 0, 1},
        {"ln_f.bias", E, 0, 2},
    };
    enum { N = sizeof t / sizeof t[0] };
    char header[4096];
    size_t len = 0, offset = 0, total = 0;
    len += (size_t)snprintf(header + len, sizeof header - len, "{");
    for (int i = 0; i < N; i++) {
        size_t n = (size_t)t[i].rows * (size_t)(t[i].cols ? t[i].cols : 1);
        if (t[i].cols)
            len += (size_t)snprintf(header + len, sizeof header - len,
                                    "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%zu,%zu]}",
                                    i ? "," : "", t[i].name, t[i].rows, t[i].cols, offset, offset + 4 * n);
        else
            len += (size_t)snprintf(header + len, sizeof header - len,
                                    "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]}",
                                    i ? "," : "", t[i].name, t[i].rows, offset, offset + 4 * n);
        offset += 4 * n;
    }
    len += (size_t)snprintf(header + len, sizeof header - len, "}");
    while (len % 8) header[len++] = ' ';
    total = offset;
    float *data = calloc(total / 4, sizeof(float));
    if (!data) return -1;
    uint64_t state = 5;
    float *p = data;
    for (int i = 0; i < N; i++) {
        size_t n = (size_t)t[i].rows * (size_t)(t[i].cols ? t[i].cols : 1);
        for (size_t k = 0; k < n; k++) {
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            float u = (float)(state >> 40) / (float)(1ULL << 24) - 0.5f; /* uniform in [-0.5, 0.5) */
            p[k] = t[i].init == 1 ? 1.0f : t[i].init == 2 ? 0.0f : u;
        }
        if (i == 0) memset(p + (size_t)REAL * E, 0, sizeof(float) * (size_t)(V - REAL) * E);
        p += n;
    }
    int ok = mkdir(dir, 0755) == 0;
    FILE *f = ok ? fopen(path("%s/model.safetensors", dir), "wb") : NULL;
    if (f) {
        uint64_t hl = len; /* little-endian on every target of these tests */
        ok = fwrite(&hl, 8, 1, f) == 1 && fwrite(header, 1, len, f) == len && fwrite(data, 1, total, f) == total;
        ok = fclose(f) == 0 && ok;
    } else {
        ok = 0;
    }
    free(data);
    char config[256];
    snprintf(config, sizeof config,
             "{\"model_type\":\"gpt2\",\"vocab_size\":%d,\"n_positions\":%d,\"n_embd\":%d,\"n_layer\":1,"
             "\"n_head\":2,\"bos_token_id\":1200,\"eos_token_id\":1200}",
             V, P, E);
    ok = ok && write_file(path("%s/config.json", dir), config);
    for (int k = 0; ok && k < 2; k++) {
        const char *name = k ? "merges.txt" : "vocab.json";
        size_t size = 0;
        unsigned char *bytes = read_file(path("%s/gpt2-tok/%s", fixtures, name), &size);
        FILE *o = bytes ? fopen(path("%s/%s", dir, name), "wb") : NULL;
        ok = o && fwrite(bytes, 1, size, o) == size;
        if (o) ok = fclose(o) == 0 && ok;
        free(bytes);
    }
    return ok ? 0 : -1;
}

/* A sampled token the tokenizer has no text for: that request ends with
 * LORA_STOP_ERROR and status LORA_INVALID_ARGUMENT, reported by its step as
 * finished (the step returns LORA_OK), and the request beside it finishes as
 * lora_generate alone. */
void test_engine_undecodable_token(void) {
    lora_model *m = NULL;
    lora_engine *e = NULL;
    const char *dir = path("%s/extra-vocab", workdir);
    CHECK(write_extra_vocab_model(dir) == 0, "writing %s", dir);
    REQUIRE_OK(lora_model_load(&m, dir, NULL));
    lora_engine_params ep;
    lora_engine_default_params(&ep);
    REQUIRE_OK(lora_engine_create(&e, m, &ep));
    lora_sampling_params hot, calm;
    lora_sampling_default_params(&hot);
    hot.temperature = 100;
    hot.top_k = 0;
    hot.top_p = 1;
    hot.seed = 3;
    hot.max_new_tokens = 20;
    lora_sampling_default_params(&calm);
    calm.temperature = 0;
    calm.stop_at_eos = 0;
    calm.max_new_tokens = 6;
    int32_t prompt[3] = {5, 17, 2};
    lora_request rq;
    lora_request_id failing = 0, other = 0;
    lora_request_default_params(&rq);
    rq.tokens = prompt;
    rq.n_tokens = 3;
    rq.sampling = &hot;
    REQUIRE_OK(lora_engine_submit(e, &rq, &failing));
    rq.sampling = &calm;
    REQUIRE_OK(lora_engine_submit(e, &rq, &other));
    int saw_failed = 0;
    for (int steps = 0; steps < 100; steps++) {
        lora_request_id finished[2];
        size_t nf = 0, nt = 0;
        REQUIRE_OK(lora_engine_step(e, finished, 2, &nf, &nt));
        for (size_t k = 0; k < nf && k < 2; k++) saw_failed |= finished[k] == failing;
        if (nf == 0 && nt == 0) break;
    }
    CHECK(saw_failed, "no step reported the failed request as finished");
    lora_request_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    REQUIRE_OK(lora_engine_request_info(e, failing, &info));
    CHECK(info.state == LORA_REQUEST_FINISHED && info.stop_reason == LORA_STOP_ERROR &&
              info.status == LORA_INVALID_ARGUMENT,
          "failed request: state %d, stop %d, status %d", info.state, info.stop_reason, info.status);
    int32_t toks[32];
    size_t n = 0;
    REQUIRE_OK(lora_engine_request_tokens(e, failing, toks, 32, &n));
    CHECK(n >= 1 && toks[n - 1] >= 1201, "the failed request's last token %d", n ? toks[n - 1] : -1);
    REQUIRE_OK(lora_engine_request_info(e, other, &info));
    CHECK(info.state == LORA_REQUEST_FINISHED && info.stop_reason == LORA_STOP_MAX_TOKENS && info.status == LORA_OK,
          "other request: state %d, stop %d, status %d", info.state, info.stop_reason, info.status);
    int32_t want[32];
    size_t nw = 0;
    REQUIRE_OK(lora_engine_request_tokens(e, other, toks, 32, &n));
    REQUIRE_OK(lora_generate_tokens(m, prompt, 3, &calm, NULL, NULL, want, 32, &nw));
    CHECK(n == nw && memcmp(toks, want, n * sizeof *toks) == 0, "the other request's tokens differ from its solo run");
done:
    lora_engine_free(e);
    lora_model_free(m);
}
