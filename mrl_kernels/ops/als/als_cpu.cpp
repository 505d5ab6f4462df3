// CPU kernel of nested_als_solve (mrl_kernels::nested_als_solve_cpp), mirroring
// reference.py beside this file; its schema is defined from spec.py (this file
// only implements it).
//
// Rows run in parallel, each its own conjugate-gradient solve (implicit's
// solver, fixed step count, warm start). A product A v is the shared Gram part
// (a D x D matrix-vector product) plus, for each observed item y of the row, its
// nested part in one pass over D: the segment dot products <y, v> between
// consecutive widths, summed into each level's prefix score c_l; then
// t_l = sum_{l' >= l} w_l' c_l', and y's segment l is added scaled by t_l.
// Accumulation in T (float32 or float64), like the reference.

#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../common.h"

namespace {

using namespace mrl_kernels;

constexpr double kTolerance = 1e-20;  // reference.py's CG_TOLERANCE

template <typename T>
struct Problem {
  Rows<T> other;
  const T* gram;  // (D, D), row-major
  const int64_t* indptr;
  const int64_t* indices;
  std::vector<int64_t> bounds;  // 0 = d_0 < d_1 < ... < d_L = D: the level segments
  std::vector<T> weights;       // w_l
  std::vector<T> suffix;        // sum_{l' >= l} w_l': the weight of segment l
  T alpha;
  int64_t D;
};

// out = A v for row r: gram v + (alpha - 1) sum_i sum_l w_l <y_i[:d_l], v[:d_l]> y_i[:d_l]
template <typename T>
void product(const Problem<T>& pb, int64_t r, const T* v, T* out, std::vector<T>& level) {
  const int64_t D = pb.D, L = static_cast<int64_t>(pb.weights.size());
  for (int64_t j = 0; j < D; ++j) out[j] = dot(pb.gram + j * D, v, D);
  for (int64_t e = pb.indptr[r]; e < pb.indptr[r + 1]; ++e) {
    const T* y = pb.other[pb.indices[e]];
    T running = 0;
    for (int64_t l = 0; l < L; ++l) {
      running += dot(y + pb.bounds[l], v + pb.bounds[l], pb.bounds[l + 1] - pb.bounds[l]);
      level[l] = pb.weights[l] * running;
    }
    T t = 0;
    for (int64_t l = L - 1; l >= 0; --l) {
      t += level[l];
      const T scale = (pb.alpha - 1) * t;
      for (int64_t j = pb.bounds[l]; j < pb.bounds[l + 1]; ++j) out[j] += scale * y[j];
    }
  }
}

template <typename T>
void solve_row(const Problem<T>& pb, int64_t r, T* x, int64_t cg_steps, std::vector<T>& work) {
  const int64_t D = pb.D, L = static_cast<int64_t>(pb.weights.size());
  if (pb.indptr[r] == pb.indptr[r + 1]) {  // no observed item: the solution is zero
    for (int64_t j = 0; j < D; ++j) x[j] = 0;
    return;
  }
  T* res = work.data();
  T* p = res + D;
  T* ap = p + D;
  std::vector<T> level(L);
  product(pb, r, x, ap, level);
  for (int64_t j = 0; j < D; ++j) res[j] = -ap[j];
  for (int64_t e = pb.indptr[r]; e < pb.indptr[r + 1]; ++e) {  // + b = alpha sum_i y_i (.) m
    const T* y = pb.other[pb.indices[e]];
    for (int64_t l = 0; l < L; ++l)
      for (int64_t j = pb.bounds[l]; j < pb.bounds[l + 1]; ++j) res[j] += pb.alpha * pb.suffix[l] * y[j];
  }
  for (int64_t j = 0; j < D; ++j) p[j] = res[j];
  T rs = dot(res, res, D);
  for (int64_t step = 0; step < cg_steps; ++step) {
    if (rs < kTolerance) break;  // NaN goes on, to the output
    product(pb, r, p, ap, level);
    const T a = rs / dot(p, ap, D);
    for (int64_t j = 0; j < D; ++j) {
      x[j] += a * p[j];
      res[j] -= a * ap[j];
    }
    const T rs_new = dot(res, res, D);
    for (int64_t j = 0; j < D; ++j) p[j] = res[j] + (rs_new / rs) * p[j];
    rs = rs_new;
  }
}

Tensor nested_als_solve(const Tensor& factors, const Tensor& other, const Tensor& gram, const Tensor& indptr,
                        const Tensor& indices, at::IntArrayRef dims, const Tensor& weights, double alpha,
                        int64_t cg_steps) {
  check_cpu_float(factors, "factors");
  TORCH_CHECK(other.scalar_type() == factors.scalar_type() && gram.scalar_type() == factors.scalar_type(),
              "other and gram must have factors' dtype");
  Tensor solved = factors.contiguous().clone();
  const Tensor items = rowwise(other), g = gram.contiguous();
  const Tensor offsets = indptr.to(at::kLong).contiguous(), ids = indices.to(at::kLong).contiguous();
  const Tensor w = weights.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(factors.scalar_type(), "nested_als_solve", [&] {
    using T = scalar_t;
    Problem<T> pb{rows_of<T>(items), g.data_ptr<T>(), offsets.data_ptr<int64_t>(), ids.data_ptr<int64_t>(),
                  {0}, {}, {}, static_cast<T>(alpha), factors.size(1)};
    for (const int64_t d : dims) pb.bounds.push_back(d);
    const double* wp = w.data_ptr<double>();
    for (size_t l = 0; l < dims.size(); ++l) pb.weights.push_back(static_cast<T>(wp[l]));
    pb.suffix.assign(dims.size(), 0);
    T total = 0;
    for (int64_t l = static_cast<int64_t>(dims.size()) - 1; l >= 0; --l) pb.suffix[l] = total += pb.weights[l];
    T* out = solved.data_ptr<T>();
    const int64_t D = pb.D;
    at::parallel_for(0, factors.size(0), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<T> work(3 * D);
      for (int64_t r = begin; r < end; ++r) solve_row(pb, r, out + r * D, cg_steps, work);
    });
  });
  return solved;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m) { m.impl("nested_als_solve_cpp", &nested_als_solve); }
