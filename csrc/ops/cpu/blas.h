// Column-major GEMM for the CPU kernels: C = alpha * op(A) op(B) + beta * C, BLAS conventions.
//
// ATen's typed cpublas::gemm overloads are not exported from libtorch_cpu, but the BLAS that torch links (MKL
// in the x86 wheels) exports the Fortran sgemm_/dgemm_ symbols, which is what cpublas itself ends in. They
// are declared weak: where a torch build exports no BLAS, a plain loop keeps the kernels correct.
#pragma once

#include <cstdint>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));
}

namespace xtc::ops::cpu {

/// Keeps the BLAS single-threaded on this thread while alive. The kernels call it from inside
/// at::parallel_for; with torch's mkl_set_dynamic(false) MKL would otherwise start a nested team per call and
/// oversubscribe the cores (measured: 25x slower on 2 cores).
class SequentialBlasGuard {
 public:
  SequentialBlasGuard() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SequentialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  SequentialBlasGuard(const SequentialBlasGuard&) = delete;
  SequentialBlasGuard& operator=(const SequentialBlasGuard&) = delete;

 private:
  int previous_;
};

enum class Trans : char { No = 'N', Yes = 'T' };

template <typename scalar_t>
void reference_gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, scalar_t alpha, const scalar_t* a,
                    int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c, int64_t ldc) {
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      scalar_t acc = 0;
      for (int64_t p = 0; p < k; ++p) {
        const scalar_t av = ta == Trans::No ? a[i + p * lda] : a[p + i * lda];
        const scalar_t bv = tb == Trans::No ? b[p + j * ldb] : b[j + p * ldb];
        acc += av * bv;
      }
      c[i + j * ldc] = alpha * acc + (beta == scalar_t(0) ? scalar_t(0) : beta * c[i + j * ldc]);
    }
  }
}

inline void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (sgemm_ == nullptr) return reference_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  const char tra = static_cast<char>(ta), trb = static_cast<char>(tb);
  const int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  sgemm_(&tra, &trb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
}

inline void gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                 int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (dgemm_ == nullptr) return reference_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  const char tra = static_cast<char>(ta), trb = static_cast<char>(tb);
  const int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  dgemm_(&tra, &trb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
}

}  // namespace xtc::ops::cpu
