/* Region affinity learning's elementwise work in C for ctsdg (src/ctsdg/cfa_native.py says what and why).
   Loaded with ctypes; the Python module at the end exists so that the file builds as an extension.

   Two kernels, each on float32 and on bfloat16 (the dtype of RAL's scores and attention under bf16 autocast):
   - ctsdg_ral_attention_*: for a block of query rows, the scores from nine shifted slices of the Gram rows, times
     the key scale, the floored softmax over the keys and the authors' clamp, in one pass per query;
   - ctsdg_ral_e_rows_*: E, the sum of the zero-padded attention and three shifted copies of it.
   Both sum in float32 and, on bf16, round once when they store (torch's bf16 ops round after each op). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_native_vectors.h"  /* the vector types, CLONES, INLINE, load, store, last_vector, splat */

/* max(a, b) lane by lane (b where they are equal), from the sign of b - a rather than a comparison: GCC 12 turns a
   comparison of 16 floats into 16 scalar ones where the target has no AVX-512 (the AVX2 build), and RAL's kernels
   then ran slower than the torch path there. b - a has its sign bit set exactly when a > b (the rounded difference
   of two floats keeps its sign, even when flushed to zero), and -inf - -inf is x86's negative NaN, which picks a = b. */
INLINE vec vmax(vec a, vec b) {
    const bits a_greater = (bits)((ivec)(b - a) >> 31);
    return (vec)(((bits)a & a_greater) | ((bits)b & ~a_greater));
}

/* exp(x) for x in [-87, 0] (the softmax's arguments here are in [-floor, 0]): x = n ln 2 + r with |r| <= ln 2 / 2
   (ln 2 in two parts, Cody and Waite), exp(r) by Cephes' expf polynomial (degree 7), times 2^n through the exponent
   bits. Over [-30, 0] in steps of 1e-6, at most 1.02 ulp (8.5e-8 relative) from exp in double precision. */
INLINE vec exp_nonpositive(vec x) {
    const vec shifter = splat(12582912.0f);  /* 1.5 * 2^23: adding it rounds to the nearest integer */
    vec t = x * splat(1.44269504088896341f) + shifter;
    const ivec n = (ivec)t - (ivec)shifter;
    t -= shifter;
    vec r = x - t * splat(0.693359375f);
    r = r - t * splat(-2.12194440e-4f);
    vec p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    return (vec)((ivec)p + (n << 23));
}

/* One query of ctsdg_ral_attention_* (see there): query (t, u) of the block, its hs x ws scores into buf
   (float32, hs * ws), then its attention into out */
INLINE void attention_query(const void *const *grams, int64_t t, int64_t u, int64_t hs, int64_t ws, const void *scale,
                            void *out, int64_t ot, int64_t ou, int64_t ok, float floor, float clamp, float *buf,
                            int bf16) {
    const int64_t n = hs * ws, wp = ws + 2, lp = (hs + 2) * wp;
    /* the nine slices: score(jy, jx) = sum over (oy, ox) of G[row t + oy][column u + ox][key (jy + oy, jx + ox)] */
    int64_t at[9];
    const void *g[3];
    for (int oy = 0; oy < 3; ++oy) {
        g[oy] = grams[t + oy];
        for (int ox = 0; ox < 3; ++ox) at[3 * oy + ox] = (u + ox) * lp + oy * wp + ox;
    }
    vec top = splat(-__builtin_inff());
    for (int64_t jy = 0; jy < hs; ++jy)
        for (int64_t j0 = 0; j0 < ws; j0 += L) {
            const int64_t jx = last_vector(j0, ws), k = ws - jx, key = jy * wp + jx;
            /* summed as cfa.py's torch path sums: along x, then along y */
            vec s = ((load(g[0], at[0] + key, k, bf16) + load(g[0], at[1] + key, k, bf16)) + load(g[0], at[2] + key, k, bf16))
                  + ((load(g[1], at[3] + key, k, bf16) + load(g[1], at[4] + key, k, bf16)) + load(g[1], at[5] + key, k, bf16));
            s += (load(g[2], at[6] + key, k, bf16) + load(g[2], at[7] + key, k, bf16)) + load(g[2], at[8] + key, k, bf16);
            s *= load(scale, jy * ws + jx, k, bf16);
            if (k < L)
                for (int64_t i = k; i < L; ++i) s[i] = -__builtin_inff();
            top = vmax(top, s);
            store_float(buf + jy * ws + jx, s, k);
        }
    float most = top[0];
    for (int i = 1; i < L; ++i) most = top[i] > most ? top[i] : most;
    /* logits more than floor below the maximum count as floor below it (cfa.LOGIT_FLOOR says why) */
    const vec shift = splat(most), lowest = splat(-floor);
    vec sum = {0};
    for (int64_t j = 0; j < n; j += L) {
        const int64_t k = n - j;
        vec e = exp_nonpositive(vmax(load_float(buf + j, k) - shift, lowest));
        if (k < L)
            for (int64_t i = k; i < L; ++i) e[i] = 0.0f;
        sum += e;
        store_float(buf + j, e, k);
    }
    float total = 0.0f;
    for (int i = 0; i < L; ++i) total += sum[i];
    const vec inverse = splat(1.0f / total), least = splat(clamp);
    const int64_t base = t * ot + u * ou;
    for (int64_t jy = 0; jy < hs; ++jy)
        for (int64_t j0 = 0; j0 < ws; j0 += L) {
            const int64_t jx = last_vector(j0, ws), k = ws - jx;
            store(out, base + jy * ok + jx, vmax(load_float(buf + jy * ws + jx, k) * inverse, least), k, bf16);
        }
}

/* The attention of query rows t = 0 .. m - 1 of a block on an hs x ws map (one image), all hs * ws keys:
   out[t * ot + u * ou + jy * ok + jx] = max(softmax over the keys j of max(l_j, max_j l - floor), clamp)
   with l_j = scale[j] * S(t, u; j), S the score: the sum over (oy, ox) in 3 x 3 of G[t + oy][u + ox][j + (oy, ox)].
   grams[r], r = 0 .. m + 1: the Gram rows of the block's padded query row r, (ws + 2) x (hs + 2)(ws + 2), contiguous;
   element strides of out in elements; scratch: hs * ws floats for each of the threads.
   Threads take whole query columns u, each all the block's rows t, so that a Gram row read for row t is still in
   the cache for rows t + 1 and t + 2. */
#define ATTENTION(name, type, bf16)                                                                                 \
CLONES void name(const type *const *grams, int64_t m, int64_t hs, int64_t ws, const type *scale, type *out,       \
                 int64_t ot, int64_t ou, int64_t ok, float floor, float clamp, float *scratch, int threads) {      \
    _Pragma("omp parallel num_threads(threads)")                                                                   \
    {                                                                                                              \
        float *buf = scratch + (size_t)omp_get_thread_num() * hs * ws;                                             \
        _Pragma("omp for schedule(static)")                                                                        \
        for (int64_t q = 0; q < m * ws; ++q)                                                                       \
            attention_query((const void *const *)grams, q % m, q / m, hs, ws, scale, out, ot, ou, ok, floor,       \
                            clamp, buf, bf16);                                                                     \
    }                                                                                                              \
}

/* E of rows t = 0 .. rows - 1 from the zero-padded attention p (rows + 1 rows; element strides pt, pu, pk, keys along
   x contiguous): e[t][u][k][v] = (p[t][u][k][v] + p[t][u+1][k][v+1]) + (p[t+1][u][k+1][v] + p[t+1][u+1][k+1][v+1])
   for u, v < ws + 1 and k < hs + 1, e contiguous (rows, ws + 1, hs + 1, ws + 1). The same order of sums as cfa.py's
   torch path. Threads take whole columns u, as above. */
#define E_ROWS(name, type, bf16)                                                                                   \
CLONES void name(const type *p, int64_t pt, int64_t pu, int64_t pk, int64_t rows, int64_t hs, int64_t ws, type *e, \
                 int threads) {                                                                                    \
    const int64_t w1 = ws + 1, h1 = hs + 1;                                                                        \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                             \
    for (int64_t q = 0; q < rows * w1; ++q) {                                                                      \
        const int64_t u = q / rows, t = q % rows, a = t * pt + u * pu, b = a + pu + 1, c = a + pt + pk, d = c + pu + 1; \
        const int64_t o = (t * w1 + u) * h1 * w1;                                                                  \
        for (int64_t k = 0; k < h1; ++k)                                                                           \
            for (int64_t v0 = 0; v0 < w1; v0 += L) {                                                               \
                const int64_t v = last_vector(v0, w1), n = w1 - v, at = k * pk + v;                                \
                store(e, o + k * w1 + v, (load(p, a + at, n, bf16) + load(p, b + at, n, bf16))                    \
                      + (load(p, c + at, n, bf16) + load(p, d + at, n, bf16)), n, bf16);                           \
            }                                                                                                      \
    }                                                                                                              \
}

ATTENTION(ctsdg_ral_attention_float, float, 0)
ATTENTION(ctsdg_ral_attention_bf16, uint16_t, 1)
E_ROWS(ctsdg_ral_e_rows_float, float, 0)
E_ROWS(ctsdg_ral_e_rows_bf16, uint16_t, 1)

#ifndef CTSDG_MODULE
#define CTSDG_MODULE _cfa_native /* _cfa_native_avx2.c names its own */
#endif
CTSDG_PYTHON_MODULE(CTSDG_MODULE)
