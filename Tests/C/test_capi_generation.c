/* test_capi_generation.c — generation: sampling, streaming, stop strings, stream-only output, misuse. Part of test_capi
 * (see test_capi.c). */
#include "test_capi.h"

/* ---- Generation ---------------------------------------------------------- */

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

void test_generation(void) {
    lora_model *m = load_model("gpt2-tok");
    lora_model *a = load_model("gpt2-a");
    if (!m || !a) goto done;
    lora_sampling_params sp;
    lora_sampling_default_params(&sp);
    sp.seed = 1234;
    sp.max_new_tokens = 24;
    sp.stop_at_eos = 0;

    collect c;
    memset(&c, 0, sizeof c);
    char out[4096];
    size_t needed = 0;
    REQUIRE_OK(lora_generate(m, "Hello", &sp, collect_piece, &c, out, sizeof out, &needed));
    CHECK(c.calls == sp.max_new_tokens, "callback called %d times for %d tokens", c.calls, sp.max_new_tokens);
    CHECK(needed == strlen(out) && strcmp(out, c.text) == 0, "streamed pieces \"%s\" != returned text \"%s\"", c.text,
          out);

    /* Same seed, same text; NULL params = defaults. */
    {
        collect c2;
        memset(&c2, 0, sizeof c2);
        char out2[4096];
        EXPECT(lora_generate(m, "Hello", &sp, collect_piece, &c2, out2, sizeof out2, &needed), LORA_OK);
        CHECK(strcmp(out, out2) == 0, "same seed, different text");
        EXPECT(lora_generate(m, "Hello", NULL, NULL, NULL, out2, sizeof out2, &needed), LORA_OK);
    }
    /* An older, smaller struct (up to max_new_tokens): the rest are defaults. */
    {
        lora_sampling_params o = sp;
        o.struct_size = (uint32_t)offsetof(lora_sampling_params, temperature);
        o.max_new_tokens = 3;
        o.temperature = NAN; /* beyond struct_size: must not be read */
        o.n_stop_strings = 5;
        collect co;
        memset(&co, 0, sizeof co);
        EXPECT(lora_generate(m, "Hello", &o, collect_piece, &co, NULL, 0, NULL), LORA_OK);
        CHECK(co.calls == 3, "small sampling struct: %d tokens, expected 3", co.calls);
    }
    /* Streaming only (out NULL, capacity 0), and an out buffer too small. */
    {
        collect c3;
        memset(&c3, 0, sizeof c3);
        size_t need3 = 0;
        EXPECT(lora_generate(m, "Hello", &sp, collect_piece, &c3, NULL, 0, &need3), LORA_OK);
        CHECK(strcmp(c3.text, out) == 0 && need3 == strlen(out), "streaming only");
        char tiny[2];
        memset(&c3, 0, sizeof c3);
        need3 = 0;
        if (strlen(out) >= 2) {
            EXPECT(lora_generate(m, "Hello", &sp, collect_piece, &c3, tiny, sizeof tiny, &need3),
                   LORA_BUFFER_TOO_SMALL);
            CHECK(need3 == strlen(out) && strcmp(c3.text, out) == 0, "BUFFER_TOO_SMALL *needed %zu, expected %zu",
                  need3, strlen(out));
        }
    }
    /* max_new_tokens 0; every output pointer NULL; a NULL stop string. */
    {
        lora_sampling_params z = sp;
        z.max_new_tokens = 0;
        char o[16] = "x";
        size_t nz = 99;
        EXPECT(lora_generate(m, "Hello", &z, NULL, NULL, o, sizeof o, &nz), LORA_OK);
        CHECK(o[0] == 0 && nz == 0, "max_new_tokens 0 gave \"%s\" (%zu)", o, nz);
        z.max_new_tokens = 3;
        EXPECT(lora_generate(m, "Hello", &z, NULL, NULL, NULL, 0, NULL), LORA_OK);
        const char *stops[2] = {"a", NULL};
        z.stop_strings = stops;
        z.n_stop_strings = 2;
        EXPECT(lora_generate(m, "Hello", &z, NULL, NULL, o, sizeof o, &nz), LORA_INVALID_ARGUMENT);
    }
    /* Greedy generation from token ids agrees with the text call. */
    {
        int32_t prompt[8];
        size_t np = 0;
        EXPECT(lora_tokenize(m, "Hello", 5, prompt, 8, &np), LORA_OK);
        lora_sampling_params g = sp;
        g.temperature = 0;
        char text[4096];
        collect ct;
        memset(&ct, 0, sizeof ct);
        EXPECT(lora_generate(m, "Hello", &g, collect_piece, &ct, text, sizeof text, &needed), LORA_OK);
        int32_t toks[64];
        size_t nt = 0;
        EXPECT(lora_generate_tokens(m, prompt, np, &g, NULL, NULL, toks, 64, &nt), LORA_OK);
        CHECK(nt == (size_t)g.max_new_tokens && nt == (size_t)ct.calls &&
                  memcmp(toks, ct.tokens, nt * sizeof *toks) == 0,
              "generate_tokens ids differ from the generate callback's ids");
        char back[4096];
        EXPECT(lora_detokenize(m, toks, nt, back, sizeof back, &needed), LORA_OK);
        CHECK(strcmp(back, text) == 0, "detokenized ids \"%s\" != text \"%s\"", back, text);
        size_t nsmall = 0;
        EXPECT(lora_generate_tokens(m, prompt, np, &g, NULL, NULL, toks, 3, &nsmall), LORA_BUFFER_TOO_SMALL);
        CHECK(nsmall == nt, "generate_tokens BUFFER_TOO_SMALL *n_out %zu, expected %zu", nsmall, nt);
        /* Stream only: NULL/0 output like lora_generate; the callback sees every token. */
        collect cs0;
        memset(&cs0, 0, sizeof cs0);
        size_t nstream = 0;
        EXPECT(lora_generate_tokens(m, prompt, np, &g, collect_piece, &cs0, NULL, 0, &nstream), LORA_OK);
        CHECK(nstream == nt && (size_t)cs0.calls == nt && memcmp(cs0.tokens, toks, nt * sizeof *toks) == 0,
              "stream-only generate_tokens: *n_out %zu, %d callbacks, expected %zu", nstream, cs0.calls, nt);
        size_t tneeded = 0;
        EXPECT(lora_generate(m, "Hello", &g, NULL, NULL, NULL, 0, &tneeded), LORA_OK);
        CHECK(tneeded == strlen(text), "stream-only generate: *needed %zu, expected %zu", tneeded, strlen(text));
        /* NULL output with a capacity is still an error. */
        EXPECT(lora_generate_tokens(m, prompt, np, &g, NULL, NULL, NULL, 64, &nstream), LORA_INVALID_ARGUMENT);
        /* A model without tokenizer generates from ids, not from text. */
        int32_t ap[3] = {1, 2, 3};
        EXPECT(lora_generate_tokens(a, ap, 3, &g, NULL, NULL, toks, 64, &nt), LORA_OK);
        EXPECT(lora_generate(a, "Hello", &g, NULL, NULL, text, sizeof text, &needed), LORA_WRONG_STATE);
        /* Generation never runs past n_positions. */
        g.max_new_tokens = 1000;
        EXPECT(lora_generate_tokens(a, ap, 3, &g, NULL, NULL, toks, 64, &nt), LORA_OK);
        CHECK(nt <= A_POSITIONS - 3, "generated %zu tokens past n_positions", nt);
    }
    /* The pieces always add up to the text, also when it ends inside a
     * multi-byte character (the random model emits byte tokens freely). */
    {
        lora_sampling_params r = sp;
        int bad = 0, runs = quick ? 4 : 16;
        for (int k = 0; k < runs; k++) {
            collect cr;
            memset(&cr, 0, sizeof cr);
            char o[1024];
            r.seed = 1000 + (uint64_t)k;
            r.max_new_tokens = 3 + k % 5;
            if (lora_generate(m, "Hello", &r, collect_piece, &cr, o, sizeof o, &needed) != LORA_OK ||
                strcmp(o, cr.text) != 0 || needed != strlen(o))
                bad++;
        }
        CHECK(bad == 0, "%d of %d generations: streamed pieces differ from the returned text", bad, runs);
    }
    /* A callback that stops. */
    {
        collect cs;
        memset(&cs, 0, sizeof cs);
        cs.stop_after = 3;
        EXPECT(lora_generate(m, "Hello", &sp, collect_piece, &cs, out, sizeof out, &needed), LORA_ABORTED);
        CHECK(cs.calls == 3, "callback called %d times after asking to stop at 3", cs.calls);
        /* ... also when the out buffer is too small: the stop wins. */
        char tiny[2];
        memset(&cs, 0, sizeof cs);
        cs.stop_after = 3;
        EXPECT(lora_generate(m, "Hello", &sp, collect_piece, &cs, tiny, sizeof tiny, &needed), LORA_ABORTED);
        int32_t prompt[1] = {5}, toks[64];
        size_t nt = 0;
        memset(&cs, 0, sizeof cs);
        cs.stop_after = 1;
        EXPECT(lora_generate_tokens(m, prompt, 1, &sp, collect_piece, &cs, toks, 64, &nt), LORA_ABORTED);
        CHECK(cs.calls == 1, "generate_tokens callback called %d times after asking to stop", cs.calls);
    }
    /* Bad arguments. */
    {
        lora_sampling_params b = sp;
        EXPECT(lora_generate(NULL, "Hello", &sp, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        EXPECT(lora_generate(m, NULL, &sp, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        EXPECT(lora_generate(m, "", &sp, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        EXPECT(lora_generate(m, "\xff\xfe", &sp, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        b.struct_size = 0;
        EXPECT(lora_generate(m, "Hello", &b, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        b.struct_size = sizeof b + 16;
        EXPECT(lora_generate(m, "Hello", &b, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        b = sp;
        b.temperature = NAN;
        EXPECT(lora_generate(m, "Hello", &b, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        b = sp;
        b.temperature = -1;
        EXPECT(lora_generate(m, "Hello", &b, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        b = sp;
        b.top_p = 0;
        EXPECT(lora_generate(m, "Hello", &b, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        b = sp;
        b.top_k = -1;
        EXPECT(lora_generate(m, "Hello", &b, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        b = sp;
        b.max_new_tokens = -1;
        EXPECT(lora_generate(m, "Hello", &b, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        b = sp;
        b.repetition_penalty = INFINITY;
        EXPECT(lora_generate(m, "Hello", &b, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        b = sp;
        b.n_stop_strings = 2; /* with stop_strings NULL */
        EXPECT(lora_generate(m, "Hello", &b, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        /* A prompt longer than n_positions. */
        char long_prompt[2048];
        long_prompt[0] = 0;
        for (int i = 0; i < 100; i++) strcat(long_prompt, "a b ");
        EXPECT(lora_generate(m, long_prompt, &sp, NULL, NULL, out, sizeof out, &needed), LORA_INVALID_ARGUMENT);
        int32_t ids[TOK_POSITIONS + 1], toks[8];
        size_t nt = 0;
        for (int i = 0; i <= TOK_POSITIONS; i++) ids[i] = 7;
        EXPECT(lora_generate_tokens(m, ids, TOK_POSITIONS + 1, &sp, NULL, NULL, toks, 8, &nt), LORA_INVALID_ARGUMENT);
        EXPECT(lora_generate_tokens(m, ids, 0, &sp, NULL, NULL, toks, 8, &nt), LORA_INVALID_ARGUMENT);
        ids[1] = TOK_VOCAB;
        EXPECT(lora_generate_tokens(m, ids, 3, &sp, NULL, NULL, toks, 8, &nt), LORA_INVALID_ARGUMENT);
        ids[1] = -3;
        EXPECT(lora_generate_tokens(m, ids, 3, &sp, NULL, NULL, toks, 8, &nt), LORA_INVALID_ARGUMENT);
    }
    /* Stop strings end the text before them (as transformers' stop_strings). */
    {
        const char *stops[1];
        char first[8] = {0};
        lora_sampling_params s = sp;
        /* The third character of the unconstrained text, as a stop string. */
        if (strlen(out) >= 4) {
            first[0] = out[2];
            stops[0] = first;
            s.stop_strings = stops;
            s.n_stop_strings = 1;
            char o2[4096];
            EXPECT(lora_generate(m, "Hello", &s, NULL, NULL, o2, sizeof o2, &needed), LORA_OK);
            CHECK(strlen(o2) <= strlen(out) && strncmp(o2, out, strlen(o2)) == 0 && strstr(o2, first) != NULL,
                  "stop string \"%s\": \"%s\" vs \"%s\"", first, o2, out);
        }
    }
done:
    lora_model_free(a);
    lora_model_free(m);
}
