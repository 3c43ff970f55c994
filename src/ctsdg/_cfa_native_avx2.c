/* RAL's kernels (_cfa_native.c) built for CPUs without AVX-512: 8 float32 lanes per vector, AVX2 and FMA only.
   With 16 lanes, as _cfa_native.c's own AVX2 clone has them, GCC keeps each vector in two AVX2 registers but moves
   it through the stack between operations, and the kernels ran slower than the torch path (a 256² forward 0.949× as
   fast with them; docs/speed_history.md, "A nineteenth look"). cfa_native.py loads this build where torch runs its
   AVX2 code. */
#define L 8
#define CTSDG_ARCH x86-64-v3
#define CTSDG_MODULE _cfa_native_avx2
#include "_cfa_native.c"
