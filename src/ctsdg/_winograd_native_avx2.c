/* Winograd's kernels (_winograd_native.c) built for CPUs without AVX-512: 8 float32 lanes per vector, AVX2 and FMA
   only, and of the fused kernels only the AVX2 one. With 16 lanes, as _winograd_native.c's own AVX2 clone has them,
   GCC keeps each vector in two AVX2 registers but moves it through the stack between operations
   (docs/speed_history.md, "A nineteenth look"). winograd_native.py loads this build where torch runs its AVX2
   code. */
#define L 8
#define CTSDG_ARCH x86-64-v3
#define CTSDG_MODULE _winograd_native_avx2
#include "_winograd_native.c"
