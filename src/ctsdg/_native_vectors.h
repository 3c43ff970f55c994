/* What ctsdg's C kernels share (_winograd_native.c, _cfa_native.c, _upsample_native.c): vectors of L float32
   lanes as GCC and clang vector types, so that one source builds for AVX-512, AVX2 or plain x86-64 (CLONES picks
   the build when the library is loaded), their loads and stores of float32 and bfloat16, OpenMP's thread number
   and the empty Python module each file builds as. */
#ifndef CTSDG_NATIVE_VECTORS_H
#define CTSDG_NATIVE_VECTORS_H
#include <stdint.h>
#include <string.h>

#ifndef L
#define L 16
#endif
typedef float vec __attribute__((vector_size(4 * L)));
typedef float vec_u __attribute__((vector_size(4 * L), aligned(4)));
typedef int32_t ivec __attribute__((vector_size(4 * L)));
typedef uint32_t bits __attribute__((vector_size(4 * L)));
typedef uint16_t half __attribute__((vector_size(2 * L)));
typedef uint16_t half_u __attribute__((vector_size(2 * L), aligned(2)));

/* one build per instruction set, picked when the library is loaded; or one build only, for the instruction set that
   CTSDG_ARCH names (the AVX2 builds, _cfa_native_avx2.c and _winograd_native_avx2.c, name x86-64-v3) */
#define CTSDG_STRING(x) #x
#define CTSDG_TARGET(x) CTSDG_STRING(arch=x)
/* The Python module that lets a C file build as an extension, named name: its own file's name, or the one an AVX2
   build's file sets in CTSDG_MODULE (_cfa_native_avx2.c, _winograd_native_avx2.c). The kernels are loaded with
   ctypes; the module has nothing in it. */
#define CTSDG_PASTE(a, b) a##b
#define CTSDG_INIT(name) CTSDG_PASTE(PyInit_, name)
#define CTSDG_PYTHON_MODULE(name)                                                                              \
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, CTSDG_STRING(name), NULL, -1, NULL};            \
    PyMODINIT_FUNC CTSDG_INIT(name)(void) { return PyModule_Create(&module); }

/* OpenMP's thread number; 0 where the file is built without OpenMP, whose kernels then run on one thread */
#ifdef _OPENMP
#include <omp.h>
#else
#define omp_get_thread_num() 0
#endif
#if defined(CTSDG_ARCH)
#define CLONES __attribute__((target(CTSDG_TARGET(CTSDG_ARCH))))
#elif defined(__x86_64__) && defined(__ELF__) && (defined(__clang__) ? __clang_major__ >= 14 : __GNUC__ >= 12)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* the first n of the L values at p (n >= L: all of them); the other lanes are zero */
static inline vec load_float(const float *p, int64_t n) {
    if (n >= L) return *(const vec_u *)p;
    vec r = {0};
    memcpy(&r, p, (size_t)n * sizeof(float));
    return r;
}

static inline void store_float(float *p, vec x, int64_t n) {
    if (n >= L) *(vec_u *)p = x;
    else memcpy(p, &x, (size_t)n * sizeof(float));
}

/* bfloat16 is the upper half of a float32: widening is a shift, narrowing rounds to nearest even (as torch
   does) and keeps NaN a NaN. */
static inline vec load_bf16(const uint16_t *p, int64_t n) {
    half h = {0};
    if (n >= L) h = *(const half_u *)p;
    else memcpy(&h, p, (size_t)n * sizeof(uint16_t));
    return (vec)(__builtin_convertvector(h, bits) << 16);
}

static inline void store_bf16(uint16_t *p, vec x, int64_t n) {
    bits b = (bits)x;
    /* NaN: magnitude bits above infinity's, from the sign of the difference (a comparison of 16 lanes would be 16
       scalar ones in the AVX2 build: see vmax in _cfa_native.c) */
    const bits nan = (bits)((ivec)(0x7f800000u - (b & 0x7fffffffu)) >> 31);
    b = ((b + 0x7fffu + ((b >> 16) & 1u)) & ~nan) | (0x7fc00000u & nan);
    const half h = __builtin_convertvector(b >> 16, half);
    if (n >= L) *(half_u *)p = h;
    else memcpy(p, &h, (size_t)n * sizeof(uint16_t));
}

/* helpers the hand-written kernels share */
#define INLINE static inline __attribute__((always_inline))

/* loads and stores of either storage: bf16 = 1 for bfloat16, 0 for float32 (a constant where inlined) */
INLINE vec load(const void *p, int64_t i, int64_t n, int bf16) {
    return bf16 ? load_bf16((const uint16_t *)p + i, n) : load_float((const float *)p + i, n);
}

INLINE void store(void *p, int64_t i, vec x, int64_t n, int bf16) {
    if (bf16) store_bf16((uint16_t *)p + i, x, n);
    else store_float((float *)p + i, x, n);
}

/* The start of the vector at i of a row of n values: i, but n - L for a last part vector when the row has at least L
   values, so that it is a whole vector overlapping the one before (the same values computed and stored twice) rather
   than a part one, whose loads and stores go through memcpy */
INLINE int64_t last_vector(int64_t i, int64_t n) { return i + L > n && n >= L ? n - L : i; }

INLINE vec splat(float a) { return (vec){0} + a; }
#endif
