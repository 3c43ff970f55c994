/* The decoders' first step in C for ctsdg (src/ctsdg/upsample_native.py says what and why). Loaded with ctypes;
   the Python module at the end exists so that the file builds as an extension.

   ctsdg_upsample2x_masked_{float,bf16}: out = up(x) ⊙ near(known), where up is torch's bilinear x2 without
   align_corners (F.interpolate(x, scale_factor=2, mode="bilinear")) of a map with its channels contiguous, near the
   nearest x2 of a one-channel float32 mask, and out any map with its channels contiguous (the decoder's
   concatenation). It sums as torch does, in float32, and on bf16 reads bf16 and rounds once when it stores. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_native_vectors.h" /* the vector types, CLONES, INLINE, load, store, last_vector, splat */

/* Output index o along an axis of n input values: the two input indices it reads and their weights, as torch computes
   them for align_corners=False: the source index (o + 0.5) / 2 - 0.5 clamped at 0, so weights 0.25 and 0.75 between
   neighbours, and the second index held at the edge. */
INLINE void taps(int64_t o, int64_t n, int64_t *a, int64_t *b, float *wa, float *wb) {
    const int64_t i = o / 2;
    if (o == 0) {
        *a = 0, *b = n > 1, *wa = 1.0f, *wb = 0.0f;
    } else if (o % 2 == 0) {
        *a = i - 1, *b = i, *wa = 0.25f, *wb = 0.75f;
    } else {
        *a = i, *b = i + (i < n - 1), *wa = 0.75f, *wb = 0.25f;
    }
}

/* x (batch, h, w, c) and out (batch, 2h, 2w, c) by their strides in elements (channels contiguous), known
   (batch, h, w) float32 by its strides, or NULL for no mask; scratch: w * c float32 per thread. Threads take whole
   output rows; for each, the two input rows are first blended into scratch (the weights along y), then each output
   pixel blends two pixels of it (the weights along x): torch's sum w00 x00 + w01 x01 + w10 x10 + w11 x11 regrouped,
   so that float32 results may differ from torch's in the last bit. A pixel whose mask is 0 is stored as 0. */
#define UPSAMPLE(name, type, bf16)                                                                                 \
CLONES void name(const type *x, int64_t batch, int64_t c, int64_t h, int64_t w, int64_t xn, int64_t xh,            \
                 int64_t xw, const float *known, int64_t kn, int64_t kh, int64_t kw, type *out, int64_t on,        \
                 int64_t oh, int64_t ow, float *scratch, int threads) {                                            \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                             \
    for (int64_t r = 0; r < batch * 2 * h; ++r) {                                                                  \
        float *blend = scratch + omp_get_thread_num() * w * c;                                                     \
        const int64_t n = r / (2 * h), oy = r % (2 * h);                                                           \
        int64_t ya, yb;                                                                                            \
        float va, vb;                                                                                              \
        taps(oy, h, &ya, &yb, &va, &vb);                                                                           \
        const type *top = x + n * xn + ya * xh, *bottom = x + n * xn + yb * xh;                                    \
        const float *mask = known ? known + n * kn + oy / 2 * kh : NULL;                                           \
        for (int64_t j = 0; j < w; ++j) {                                                                          \
            if (mask && mask[j * kw] == 0.0f && (j == 0 || mask[(j - 1) * kw] == 0.0f)                             \
                && (j == w - 1 || mask[(j + 1) * kw] == 0.0f))                                                     \
                continue; /* no output pixel of this row that is not masked reads column j */                      \
            for (int64_t c0 = 0; c0 < c; c0 += L) {                                                                \
                const int64_t ch = last_vector(c0, c), k = c - ch;                                                 \
                store_float(blend + j * c + ch, splat(va) * load(top, j * xw + ch, k, bf16)                        \
                                                + splat(vb) * load(bottom, j * xw + ch, k, bf16), k);              \
            }                                                                                                      \
        }                                                                                                          \
        type *row = out + n * on + oy * oh;                                                                        \
        for (int64_t ox = 0; ox < 2 * w; ++ox) {                                                                   \
            const float m = mask ? mask[ox / 2 * kw] : 1.0f;                                                       \
            if (m == 0.0f) {                                                                                       \
                for (int64_t c0 = 0; c0 < c; c0 += L) {                                                            \
                    const int64_t ch = last_vector(c0, c);                                                         \
                    store(row, ox * ow + ch, splat(0.0f), c - ch, bf16);                                           \
                }                                                                                                  \
                continue;                                                                                          \
            }                                                                                                      \
            int64_t a, b;                                                                                          \
            float ua, ub;                                                                                          \
            taps(ox, w, &a, &b, &ua, &ub);                                                                         \
            const vec wa = splat(ua * m), wb = splat(ub * m);                                                      \
            for (int64_t c0 = 0; c0 < c; c0 += L) {                                                                \
                const int64_t ch = last_vector(c0, c), k = c - ch;                                                 \
                store(row, ox * ow + ch, wa * load_float(blend + a * c + ch, k) + wb * load_float(blend + b * c + ch, k), \
                      k, bf16);                                                                                    \
            }                                                                                                      \
        }                                                                                                          \
    }                                                                                                              \
}

UPSAMPLE(ctsdg_upsample2x_masked_float, float, 0)
UPSAMPLE(ctsdg_upsample2x_masked_bf16, uint16_t, 1)

CTSDG_PYTHON_MODULE(_upsample_native)
