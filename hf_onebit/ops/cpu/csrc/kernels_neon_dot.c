/* The NEON kernels of kernels_neon.c compiled with +dotprod (ARMv8.2 SDOT), which defines __ARM_FEATURE_DOTPROD and
 * so selects the SDOT inner loops and the names onebit_kernels_neon_dot / onebit_ternary_kernels_neon_dot. */
#include "kernels_neon.c"
