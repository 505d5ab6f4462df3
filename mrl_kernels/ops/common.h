// C++ pieces every operator's CPU kernels share (and LazyAdam's row pass):
// contiguous dot products the compiler vectorises, strided row views, row
// prefetching, argument checks. float32 and float64; float32 inputs accumulate
// in float32, like the reference. Rows of a batch run in parallel
// (at::parallel_for on OpenMP); sums that several rows feed are ordered by
// batch row whatever the thread count.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <array>
#include <cstdint>
#include <tuple>
#include <vector>

namespace mrl_kernels {

using at::Tensor;

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

// Strided 2-D view of rows with contiguous columns.
template <typename T>
struct Rows {
  const T* data;
  int64_t stride;
  const T* operator[](int64_t i) const { return data + i * stride; }
};

template <typename T>
inline Rows<T> rows_of(const Tensor& t) {
  TORCH_CHECK(t.dim() == 2 && (t.size(1) <= 1 || t.stride(1) == 1), "expected rows with contiguous columns");
  return {t.data_ptr<T>(), t.stride(0)};
}

// Rows may be strided, columns must be contiguous.
inline Tensor rowwise(const Tensor& t) { return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous(); }

constexpr int64_t kGrain = 16;  // batch rows per parallel task at least

// How many candidates ahead rows are prefetched, and the prefetch of one row's
// first n values (one request per 64-byte line).
constexpr int64_t kPrefetch = 4;

template <typename T>
inline void prefetch_row(const T* row, int64_t n) {
  for (int64_t k = 0; k < n; k += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(row + k);
}

inline void check_cpu_float(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64 for the cpp backend, got ", t.scalar_type());
}

inline std::vector<int64_t> as_vector(at::IntArrayRef dims) { return {dims.begin(), dims.end()}; }

// A backward operator's three gradients, those output_mask masks replaced by
// fresh empty tensors (outputs never alias); the twin of common.py's masked().
inline std::tuple<Tensor, Tensor, Tensor> masked(const Tensor& a, const Tensor& b, const Tensor& c,
                                                 std::array<bool, 3> output_mask, const at::TensorOptions& options) {
  const auto kept = [&](bool needed, const Tensor& g) { return needed ? g : at::empty({0}, options); };
  return {kept(output_mask[0], a), kept(output_mask[1], b), kept(output_mask[2], c)};
}

}  // namespace mrl_kernels
