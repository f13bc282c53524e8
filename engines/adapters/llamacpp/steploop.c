/* codebench: greedy llama.cpp decode steps driven from C, as llama-bench drives llama_decode.
 *
 * Built at first use by steploop.py with the system's C compiler and called through ctypes; it links nothing:
 * llama_decode and llama_get_logits come in as the addresses llama-cpp-python's libllama already resolved.
 * One call runs the whole decode phase: per step one llama_decode over the batch (one token per sequence),
 * the first maximum of each sequence's logits row (numpy's argmax: the first NaN wins if there is one), the
 * token and position written back into the batch, and CLOCK_MONOTONIC (Python's perf_counter on Linux) after it.
 */
#include <math.h>
#include <stdint.h>
#include <time.h>

typedef struct llama_batch { /* llama.h's layout, as llama-cpp-python's ctypes mirror declares it */
    int32_t n_tokens;
    int32_t *token;
    float *embd;
    int32_t *pos;
    int32_t *n_seq_id;
    int32_t **seq_id;
    int8_t *logits;
} llama_batch;

typedef int32_t (*decode_fn)(void *ctx, llama_batch batch);
typedef float *(*logits_fn)(void *ctx);

static int64_t argmax_scalar(const float *row, int64_t n) {
    int64_t best = 0;
    float top = row[0];
    if (isnan(top)) return 0;
    for (int64_t v = 1; v < n; v++) {
        float x = row[v];
        if (x > top) { top = x; best = v; }
        else if (isnan(x)) return v;
    }
    return best;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
/* Large vocabularies (150k entries) make a scalar scan cost more than numpy's vectorized argmax: the max in
 * 8-wide lanes, then the first index that holds it. NaN anywhere goes to the scalar scan. */
__attribute__((target("avx2"))) static int64_t argmax_avx2(const float *row, int64_t n) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, unord = _mm256_setzero_ps();
    int64_t v = 0;
    for (; v + 16 <= n; v += 16) {
        __m256 a = _mm256_loadu_ps(row + v), b = _mm256_loadu_ps(row + v + 8);
        unord = _mm256_or_ps(unord, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
        m0 = _mm256_max_ps(m0, a);
        m1 = _mm256_max_ps(m1, b);
    }
    float lanes[8], top = -INFINITY;
    _mm256_storeu_ps(lanes, _mm256_max_ps(m0, m1));
    for (int j = 0; j < 8; j++) top = lanes[j] > top ? lanes[j] : top;
    for (; v < n; v++) {
        if (isnan(row[v])) return argmax_scalar(row, n);
        top = row[v] > top ? row[v] : top;
    }
    if (_mm256_movemask_ps(unord)) return argmax_scalar(row, n);
    __m256 want = _mm256_set1_ps(top);
    for (v = 0; v + 8 <= n; v += 8) {
        int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + v), want, _CMP_EQ_OQ));
        if (hit) return v + __builtin_ctz(hit);
    }
    for (; v < n; v++)
        if (row[v] == top) return v;
    return 0; /* all -inf */
}
#endif

static int64_t argmax(const float *row, int64_t n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static int avx2 = -1;
    if (avx2 < 0) avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    if (avx2) return argmax_avx2(row, n);
#endif
    return argmax_scalar(row, n);
}

int64_t codebench_argmax(const float *row, int64_t n) { return argmax(row, n); } /* for the tests */

/* Steps 1..n_steps-1 of a greedy generation: batch holds each sequence's token from the previous step, one per
 * sequence, with logits requested. out is step-major (n_steps x n_tokens); ends[step] gets the clock after the
 * step. Returns llama_decode's code (0 when every step ran) and the steps done in *done. */
int32_t codebench_greedy_steps(decode_fn decode, logits_fn get_logits, void *ctx, llama_batch *batch,
                               int32_t n_vocab, int32_t n_steps, int64_t *out, double *ends, int32_t *done) {
    const int32_t b = batch->n_tokens;
    struct timespec now;
    *done = 1;
    for (int32_t step = 1; step < n_steps; step++) {
        int32_t rc = decode(ctx, *batch);
        if (rc != 0) return rc;
        const float *logits = get_logits(ctx);
        for (int32_t i = 0; i < b; i++) {
            int64_t token = argmax(logits + (int64_t)i * n_vocab, n_vocab);
            out[(int64_t)step * b + i] = token;
            batch->token[i] = (int32_t)token;
            batch->pos[i] += 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        ends[step] = (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
        *done = step + 1;
    }
    return 0;
}
