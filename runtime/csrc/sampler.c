/* sampler.c - next-token sampler over one row of logits (crome_sample); reference: runtime/sampling.py.
 *
 * Candidates are ordered by (logit descending, id ascending) through one packed uint64 key per token,
 * so ties resolve exactly as the reference's stable ordering does. A short sorted prefix comes from a
 * bounded max-heap; a long one (large top-k, or a top-p nucleus that a 64-token prefix does not cover)
 * from a stable radix sort of all keys. Softmax sums over the whole vocabulary use a vectorised exp.
 */
#include "crome_core.h"
#include "vecmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* FMA contraction only speeds up exp_nonpos here: the arithmetic the reference must match exactly
 * (logit / temperature - max, running sums, u * total) has no multiply-add to contract. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

/* prefix lengths: the first top-p try, the longest taken from a heap; CHUNK: top-p evaluation step */
enum { HEAP_FIRST = 64, HEAP_MAX = 1024, CHUNK = 1024 };
enum { BLOCK = 64 }; /* floats tested at once when scanning for a value */

crome_sampler_params crome_sampler_params_default(void) {
    crome_sampler_params p = {.temperature = 0.0, .top_p = 1.0, .repetition_penalty = 1.0f, .top_k = 0};
    return p;
}

static crome_status check_params(const crome_sampler_params *p, double u) {
    if (p->temperature != 0.0 && !(p->temperature >= 1e-6 && isfinite(p->temperature))) return CROME_ERR_PARAM;
    if (!(p->top_p > 0.0 && p->top_p <= 1.0)) return CROME_ERR_PARAM;
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty)) return CROME_ERR_PARAM;
    if (p->top_k < 0) return CROME_ERR_PARAM;
    if (!(u >= 0.0 && u < 1.0)) return CROME_ERR_PARAM;
    return CROME_OK;
}

/* max(z), vectorised; *bad is set if any z is NaN or +inf. */
static float scan_max(const float *z, int64_t n, int *bad) {
    vf m = (vf){0} - INFINITY;
    vi b = {0};
    int64_t i = 0;
    for (; i + CROME_VW <= n; i += CROME_VW) {
        vf v;
        memcpy(&v, z + i, sizeof v);
        b |= ~(v < INFINITY);
        const vi gt = v > m;
        m = (vf)((gt & (vi)v) | (~gt & (vi)m));
    }
    float mx = -INFINITY;
    *bad = 0;
    for (int l = 0; l < CROME_VW; l++) {
        mx = m[l] > mx ? m[l] : mx;
        *bad |= b[l] != 0;
    }
    for (; i < n; i++) {
        *bad |= !(z[i] < INFINITY);
        mx = z[i] > mx ? z[i] : mx;
    }
    return mx;
}

/* Index of the first z equal to v (which occurs in z); blocks without it are skipped with a vectorised test. */
static int64_t find_first(const float *z, int64_t n, float v) {
    int64_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK) {
        int any = 0;
        for (int k = 0; k < BLOCK; k++) any |= z[i + k] == v;
        if (any) break;
    }
    while (z[i] != v) i++;
    return i;
}

/* Key sorting ascending in (value descending, id ascending); -0.0 and 0.0 are the same value. */
static inline uint32_t value_key(float v) {
    uint32_t b;
    if (v == 0.0f) v = 0.0f;
    memcpy(&b, &v, sizeof b);
    return (b & 0x80000000u) ? b : ~b & 0x7fffffffu; /* ascending key for descending v */
}

static inline uint64_t order_key(float v, int64_t id) { return (uint64_t)value_key(v) << 32 | (uint32_t)id; }

static inline int32_t key_id(uint64_t k) { return (int32_t)(uint32_t)k; }

static void sift_down(uint64_t *h, int64_t n, int64_t i) { /* max-heap */
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && h[c + 1] > h[c]) c++;
        if (h[i] >= h[c]) return;
        const uint64_t t = h[i];
        h[i] = h[c], h[c] = t, i = c;
    }
}

/* The k smallest keys of z (0 < k <= n) in ascending order: heap selection, then heapsort. Scanning ids
 * upwards, only a value above the heap's largest-key value can enter (an equal value has a larger id),
 * so whole blocks below it are skipped with one vectorised test. */
static void heap_prefix(const float *z, int64_t n, int64_t k, uint64_t *out) {
    for (int64_t i = 0; i < k; i++) out[i] = order_key(z[i], i);
    for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(out, k, i);
    float bar = z[key_id(out[0])];
    for (int64_t i = k; i < n;) {
        if (i + BLOCK <= n) {
            int above = 0;
            for (int j = 0; j < BLOCK; j++) above |= z[i + j] > bar;
            if (!above) {
                i += BLOCK;
                continue;
            }
        }
        const int64_t end = i + BLOCK < n ? i + BLOCK : n;
        for (; i < end; i++)
            if (z[i] > bar) {
                out[0] = order_key(z[i], i);
                sift_down(out, k, 0);
                bar = z[key_id(out[0])];
            }
    }
    for (int64_t m = k - 1; m > 0; m--) {
        const uint64_t t = out[0];
        out[0] = out[m], out[m] = t;
        sift_down(out, m, 0);
    }
}

/* All n keys in ascending order: stable LSD radix sort, 8 bits a pass, on the 32 value bits (the ids in
 * the low bits are ascending already); a pass whose digit is the same in every key is skipped. dst and
 * tmp hold n keys each; the result ends in dst. */
static void radix_all(const float *z, int64_t n, uint64_t *const dst, uint64_t *tmp) {
    int32_t start[4][256] = {{0}};
    uint64_t *out = dst;
    for (int64_t i = 0; i < n; i++) out[i] = order_key(z[i], i);
    for (int64_t i = 0; i < n; i++) {
        const uint32_t v = (uint32_t)(out[i] >> 32);
        start[0][v & 255]++, start[1][(v >> 8) & 255]++, start[2][(v >> 16) & 255]++, start[3][v >> 24]++;
    }
    for (int d = 0; d < 4; d++) {
        const int shift = 32 + 8 * d;
        if (start[d][(out[0] >> shift) & 255] == n) continue;
        for (int32_t b = 0, sum = 0; b < 256; b++) {
            const int32_t count = start[d][b];
            start[d][b] = sum, sum += count;
        }
        for (int64_t i = 0; i < n; i++) tmp[start[d][(out[i] >> shift) & 255]++] = out[i];
        uint64_t *t = out;
        out = tmp, tmp = t;
    }
    if (out != dst) memcpy(dst, out, sizeof(uint64_t) * (size_t)n);
}

/* e[j] = exp(x_j - max x) and c[j] = running sum, for sorted candidates j in [from, to). */
static void prefix_cdf(const float *z, const uint64_t *keys, int64_t from, int64_t to, double T, double m,
                       double *e, double *c) {
    for (int64_t j = from; j < to; j++) c[j] = (double)z[key_id(keys[j])] / T - m;
    for (int64_t j = from; j < to; j++) e[j] = exp_nonpos(c[j]);
    double s = from > 0 ? c[from - 1] : 0.0;
    for (int64_t j = from; j < to; j++) c[j] = s += e[j];
}

/* First j with c[j] > target; rounding at the top end falls back to the last positive weight. */
static int64_t inverse_cdf(const double *e, const double *c, int64_t n, double target) {
    int64_t lo = 0, hi = n; /* c is non-decreasing: binary search */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (c[mid] > target) hi = mid;
        else lo = mid + 1;
    }
    int64_t j = lo < n ? lo : n - 1;
    while (j > 0 && e[j] == 0.0) j--;
    return j;
}

crome_status crome_sample(const float *logits, int64_t n_vocab, const int64_t *recent, int64_t n_recent,
                          const crome_sampler_params *p, double u, int32_t *token) {
    if (!logits || !p || !token || (n_recent > 0 && !recent)) return CROME_ERR_NULL;
    if (n_vocab < 1 || n_vocab > INT32_MAX || n_recent < 0) return CROME_ERR_SHAPE;
    crome_status st = check_params(p, u);
    if (st != CROME_OK) return st;
    for (int64_t i = 0; i < n_recent; i++)
        if (recent[i] < 0 || recent[i] >= n_vocab) return CROME_ERR_VALUE;

    const int64_t n = n_vocab;
    const int64_t k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    const int top_p = p->top_p < 1.0;
    /* scratch: z (n floats); e, c (n doubles each); keys, tmp (n uint64 each) when candidates are sorted */
    const int sorted = k < n || top_p;
    const size_t per_token = sizeof(float) + 2 * sizeof(double) + (sorted ? 2 * sizeof(uint64_t) : 0);
    char *ws = malloc(per_token * (size_t)n);
    if (!ws) return CROME_ERR_NOMEM;
    double *e = (double *)ws, *c = e + n;
    uint64_t *keys = (uint64_t *)(c + n), *tmp = keys + (sorted ? n : 0);
    float *z = (float *)(sorted ? tmp + n : keys); /* penalised logits */

    memcpy(z, logits, sizeof(float) * (size_t)n);
    if (p->repetition_penalty != 1.0f)
        for (int64_t i = 0; i < n_recent; i++) { /* from the original logit, so duplicates count once */
            const float l = logits[recent[i]];
            z[recent[i]] = l > 0.0f ? l / p->repetition_penalty : l * p->repetition_penalty;
        }
    int bad;
    const float zmax = scan_max(z, n, &bad);
    if (bad || zmax == -INFINITY) {
        free(ws);
        return CROME_ERR_VALUE;
    }
    if (p->temperature == 0.0 || k == 1) { /* greedy: first maximum */
        *token = (int32_t)find_first(z, n, zmax);
        free(ws);
        return CROME_OK;
    }

    const double T = p->temperature, m = (double)zmax / T;
    int64_t kept;
    if (!sorted) { /* temperature only: the whole vocabulary in id order */
        for (int64_t i = 0; i < n; i++) e[i] = exp_nonpos((double)z[i] / T - m);
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) c[i] = s += e[i];
        kept = n;
    } else {
        double threshold = 0.0;
        int64_t len = k; /* sorted prefix length */
        if (k == n) {    /* top-p alone: its threshold is a share of the whole vocabulary's mass */
            for (int64_t i = 0; i < n; i++) e[i] = exp_nonpos((double)z[i] / T - m);
            double total = 0.0;
            for (int64_t i = 0; i < n; i++) total += e[i];
            threshold = p->top_p * total;
            /* each e <= 1, so a HEAP_FIRST prefix cannot hold a threshold above HEAP_FIRST */
            len = n < HEAP_FIRST || threshold > HEAP_FIRST ? n : HEAP_FIRST;
        }
        for (;;) {
            if (len > HEAP_MAX || 8 * len > n) radix_all(z, n, keys, tmp);
            else heap_prefix(z, n, len, keys);
            if (k < n) { /* top-k: the threshold is a share of the k candidates' mass */
                prefix_cdf(z, keys, 0, len, T, m, e, c);
                threshold = p->top_p * c[len - 1];
                break;
            }
            int64_t done = 0; /* top-p alone: evaluate the prefix in chunks until it holds the mass */
            while (done < len && (done == 0 || c[done - 1] < threshold)) {
                const int64_t end = len - done > CHUNK ? done + CHUNK : len;
                prefix_cdf(z, keys, done, end, T, m, e, c);
                done = end;
            }
            if (c[done - 1] >= threshold || len == n) {
                len = done;
                break;
            }
            len = n; /* the short prefix does not hold top_p of the mass: sort everything */
        }
        kept = len;
        if (top_p) { /* the shortest prefix whose mass reaches the threshold */
            int64_t j = 0;
            while (j < len - 1 && !(c[j] >= threshold)) j++;
            kept = j + 1;
        }
    }
    const int64_t j = inverse_cdf(e, c, kept, u * c[kept - 1]);
    *token = sorted ? key_id(keys[j]) : (int32_t)j;
    free(ws);
    return CROME_OK;
}
