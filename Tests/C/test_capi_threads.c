/* test_capi_threads.c — one model used from several threads at once. Part of test_capi (see test_capi.c). */
#include "test_capi.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- Threads ----------------------------------------------------------- */

typedef struct thread_job {
    const char *model_dir;
    const lora_model *shared; /* a model both threads use at once */
    const int32_t *ids;
    size_t n_ids;
    const float *want_logits; /* single-threaded results */
    const char *want_text;
    int rounds;
    int failures;
    char error[512];
} thread_job;

static const lora_sampling_params *thread_sampling(void) {
    static lora_sampling_params sp;
    lora_sampling_default_params(&sp);
    sp.seed = 77;
    sp.max_new_tokens = 16;
    sp.stop_at_eos = 0;
    sp.top_k = 20;
    return &sp;
}

static void *thread_main(void *arg) {
    thread_job *job = arg;
    lora_model *m = NULL;
    const size_t n = job->n_ids * TOK_VOCAB;
    float *logits = malloc(n * sizeof *logits);
    char text[4096];
    size_t needed = 0;
    if (lora_model_load(&m, job->model_dir, NULL) != LORA_OK) {
        snprintf(job->error, sizeof job->error, "load: %s", lora_last_error());
        job->failures++;
        goto done;
    }
    for (int r = 0; r < job->rounds; r++) {
        const lora_model *models[2] = {m, job->shared};
        for (int k = 0; k < 2; k++) {
            if (lora_logits(models[k], job->ids, job->n_ids, logits, n) != LORA_OK ||
                memcmp(logits, job->want_logits, n * sizeof *logits) != 0) {
                snprintf(job->error, sizeof job->error, "logits differ (round %d, %s model): %s", r,
                         k ? "shared" : "own", lora_last_error());
                job->failures++;
            }
            if (lora_generate(models[k], "Hello", thread_sampling(), NULL, NULL, text, sizeof text, &needed) !=
                    LORA_OK ||
                strcmp(text, job->want_text) != 0) {
                snprintf(job->error, sizeof job->error, "text differs (round %d, %s model): \"%.200s\" %.200s", r,
                         k ? "shared" : "own", text, lora_last_error());
                job->failures++;
            }
        }
        /* The error message is per thread. */
        int32_t bad = -1;
        if (lora_logits(m, &bad, 1, logits, n) != LORA_INVALID_ARGUMENT || lora_last_error()[0] == 0) {
            snprintf(job->error, sizeof job->error, "per-thread error missing");
            job->failures++;
        }
    }
done:
    free(logits);
    lora_model_free(m);
    return NULL;
}

void test_threads(void) {
    st_file ref;
    lora_model *m = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    char text[4096];
    size_t needed = 0;
    const char *dir = path("%s/gpt2-tok", fixtures);
    if (!st_open(&ref, path("%s/expected/gpt2-tok.safetensors", fixtures))) {
        CHECK(0, "cannot read expected/gpt2-tok.safetensors");
        return;
    }
    size_t n_ids = 0;
    ids = st_ids(&ref, "ids", &n_ids);
    m = load_model("gpt2-tok");
    if (!ids || !m) goto done;
    logits = malloc(n_ids * TOK_VOCAB * sizeof *logits);
    REQUIRE_OK(lora_logits(m, ids, n_ids, logits, n_ids * TOK_VOCAB));
    REQUIRE_OK(lora_generate(m, "Hello", thread_sampling(), NULL, NULL, text, sizeof text, &needed));

    thread_job jobs[2];
    pthread_t threads[2];
    int started[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].model_dir = dir;
        jobs[i].shared = m;
        jobs[i].ids = ids;
        jobs[i].n_ids = n_ids;
        jobs[i].want_logits = logits;
        jobs[i].want_text = text;
        jobs[i].rounds = quick ? 2 : 8;
        started[i] = pthread_create(&threads[i], NULL, thread_main, &jobs[i]) == 0;
        CHECK(started[i], "pthread_create");
    }
    /* The main thread's error is untouched by the threads' failures. */
    {
        int32_t bad = TOK_VOCAB;
        EXPECT(lora_logits(m, &bad, 1, logits, n_ids * TOK_VOCAB), LORA_INVALID_ARGUMENT);
    }
    char mine[512];
    snprintf(mine, sizeof mine, "%s", lora_last_error());
    for (int i = 0; i < 2; i++) {
        if (!started[i]) continue;
        pthread_join(threads[i], NULL);
        CHECK(jobs[i].failures == 0, "thread %d: %d failures, last: %s", i, jobs[i].failures, jobs[i].error);
    }
    CHECK(strcmp(mine, lora_last_error()) == 0, "main thread's last error changed by other threads");
done:
    free(ids);
    free(logits);
    lora_model_free(m);
    st_close(&ref);
}

/* fork() after liblora's workers exist: the child starts with an empty pool
 * and computes the same logits. A smoke test: the case the pool's atfork
 * handler is for (a fork while another thread's job is in flight, which left
 * the child waiting forever) cannot be forced deterministically. */
void test_fork(void) {
    st_file ref;
    memset(&ref, 0, sizeof ref);
    lora_model *m = NULL;
    int32_t *ids = NULL;
    float *logits = NULL, *again = NULL;
    lora_model_params mp;
    lora_model_default_params(&mp);
    mp.n_threads = 2;
    if (!st_open(&ref, path("%s/expected/gpt2-tok.safetensors", fixtures))) {
        CHECK(0, "cannot read expected/gpt2-tok.safetensors");
        return;
    }
    size_t n_ids = 0;
    ids = st_ids(&ref, "ids", &n_ids);
    REQUIRE_OK(lora_model_load(&m, path("%s/gpt2-tok", fixtures), &mp));
    if (!ids) goto done;
    size_t n = n_ids * TOK_VOCAB;
    logits = malloc(n * sizeof *logits);
    again = malloc(n * sizeof *again);
    REQUIRE_OK(lora_logits(m, ids, n_ids, logits, n)); /* the workers now exist */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int ok = lora_logits(m, ids, n_ids, again, n) == LORA_OK && max_abs_diff(again, logits, n) == 0.0f;
        /* Everything freed: under valgrind the child's own leak check counts. */
        lora_model_free(m);
        free(logits);
        free(again);
        free(ids);
        st_close(&ref);
        free_paths();
        _exit(ok ? 0 : 3);
    }
    CHECK(pid > 0, "fork failed");
    if (pid > 0) {
        int status = 0, done_waiting = 0;
        struct timespec tick = {0, 100 * 1000 * 1000};
        for (int i = 0; i < 300 && !done_waiting; i++) { /* 30 s */
            if (waitpid(pid, &status, WNOHANG) == pid)
                done_waiting = 1;
            else
                nanosleep(&tick, NULL);
        }
        if (!done_waiting) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
        }
        CHECK(done_waiting && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the forked child %s (status %d)",
              done_waiting ? "failed" : "hung", status);
    }
done:
    lora_model_free(m);
    free(logits);
    free(again);
    free(ids);
    st_close(&ref);
}
