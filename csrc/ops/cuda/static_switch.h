// Turns runtime dtype and head-dim values into compile-time constants for the launcher templates, so the host
// glue names each instantiation once. Callers validate the value first: the last branch is taken for anything
// not matched earlier.
//
// Shape legend: d head dim.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// XTC_HALF_SWITCH(is_bf16, elem_t, ...): runs the lambda body with elem_t = __nv_bfloat16 or __half.
#define XTC_HALF_SWITCH(IS_BF16, ELEM_T, ...) \
  [&] {                                       \
    if (IS_BF16) {                            \
      using ELEM_T = __nv_bfloat16;           \
      return __VA_ARGS__();                   \
    } else {                                  \
      using ELEM_T = __half;                  \
      return __VA_ARGS__();                   \
    }                                         \
  }()

// XTC_HEADDIM_SWITCH(d, kHeadDim, ...): runs the lambda body with constexpr kHeadDim in {32, 64, 128}.
#define XTC_HEADDIM_SWITCH(HEADDIM, CONST_NAME, ...) \
  [&] {                                              \
    if ((HEADDIM) == 32) {                           \
      constexpr static int CONST_NAME = 32;          \
      return __VA_ARGS__();                          \
    } else if ((HEADDIM) == 64) {                    \
      constexpr static int CONST_NAME = 64;          \
      return __VA_ARGS__();                          \
    } else {                                         \
      constexpr static int CONST_NAME = 128;         \
      return __VA_ARGS__();                          \
    }                                                \
  }()
