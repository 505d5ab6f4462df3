// CPU kernel of nested_als_solve (mrl_kernels::nested_als_solve_cpp), mirroring
// reference.py beside this file; its schema is defined from spec.py (this file
// only implements it).
//
// Blocks of rows run in parallel, each row its own conjugate-gradient solve
// (implicit's solver, fixed step count, warm start), a block's rows in lockstep
// (solve_block). A product A v is the shared Gram part (for a block: one GEMM)
// plus, for each observed item y of the row, its nested part in one pass over D:
// the segment dot products <y, v> between consecutive widths, summed into each
// level's prefix score s_l; then t_l = sum_{l' >= l} c_l' s_l' (c_l = w_l
// (alpha_l - 1), the observed part's mask), and y's segment l is added scaled by
// t_l, 4 floats or 2 doubles at a time where the widths allow (observed_part).
// The first residual b - A x is summed item by item, (sum_{l' >= l} w_l' alpha_l'
// - t_l) y on segment l, as implicit does. Accumulation in T (float32 or
// float64), like the reference.

#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common.h"

namespace {

using namespace mrl_kernels;

constexpr double kTolerance = 1e-20;  // reference.py's CG_TOLERANCE
constexpr int64_t kBlock = 256;       // rows solved in lockstep (their residuals and directions stay in cache)

template <typename T>
struct Problem {
  Rows<T> other;
  const T* gram;  // (D, D), row-major
  const int64_t* indptr;
  const int64_t* indices;
  std::vector<T> coefs;   // c_l = w_l (alpha_l - 1)
  std::vector<T> target;  // sum_{l' >= l} w_l' alpha_l': b's weight on segment l
  int64_t D;
};

// W values of T in one register where W > 1 (GCC's and Clang's vector extension: arithmetic
// lane by lane, a scalar operand broadcast), T itself where W = 1.
template <typename T, int W>
struct Lanes {
  typedef T type __attribute__((vector_size(sizeof(T) * W)));
};
template <typename T>
struct Lanes<T, 1> {
  using type = T;
};

template <typename V, typename T>
inline V load(const T* p) {
  V x;
  std::memcpy(&x, p, sizeof(V));
  return x;
}

// The sum of a register's W lanes as a tree (pairs, then pairs of those): each level's segment sum
// apart from the running prefix, which then takes one addition a level (lane by lane into it, the
// prefix would chain W additions a level, every entry's scores waiting on their latency)
template <int W, typename T, typename V>
inline T lane_sum(V v) {
  if constexpr (W == 1) {
    return v;
  } else {
    T lanes[W];
    std::memcpy(lanes, &v, sizeof(V));
    for (int width = W / 2; width > 0; width /= 2)
      for (int k = 0; k < width; ++k) lanes[k] = lanes[2 * k] + lanes[2 * k + 1];
    return lanes[0];
  }
}

// The levels' segment bounds 0 = d_0 < d_1 < ... < d_L = D, either fixed when compiling
// (FixedBounds: the default widths, whose loops over the levels and their segments then
// unroll, every bound a constant) or read from the problem (Bounds: any widths).
// each_level(bounds, f) calls f(l) for l = 0 .. L - 1, or L - 1 .. 0 with down = true.
template <int64_t... B>
struct FixedBounds {
  static constexpr int64_t at[] = {B...};
};

struct Bounds {
  const int64_t* at;
  int64_t levels;
};

template <int64_t... B, typename F, size_t... I>
inline void each_level(FixedBounds<B...>, F f, std::index_sequence<I...>, bool down) {
  if (down)
    (f(std::integral_constant<int64_t, sizeof...(I) - 1 - I>{}), ...);
  else
    (f(std::integral_constant<int64_t, I>{}), ...);
}
template <int64_t... B, typename F>
inline void each_level(FixedBounds<B...> bounds, F f, bool down = false) {
  each_level(bounds, f, std::make_index_sequence<sizeof...(B) - 1>{}, down);
}
template <typename F>
inline void each_level(Bounds bounds, F f, bool down = false) {
  if (down)
    for (int64_t l = bounds.levels - 1; l >= 0; --l) f(l);
  else
    for (int64_t l = 0; l < bounds.levels; ++l) f(l);
}

// For each observed item y of row r: its nested score of v per segment,
// t_l = sum_{l' >= l} c_l' <y[:d_l'], v[:d_l']>, and then out[segment l] += coef(l, t_l) y
// (one pass over D for the scores, one for the update). Both passes go W coordinates at a
// time, W dividing every width: a segment's dot product is two W-lane sums added up once,
// so the narrow segments (4, 4, 8) cost a few vector operations, not a loop each.
template <int W, typename T, typename Layout, typename Coef>
void observed_part(const Problem<T>& pb, Layout bounds, int64_t r, const T* v, T* out, std::vector<T>& level,
                   Coef coef) {
  using V = typename Lanes<T, W>::type;
  for (int64_t e = pb.indptr[r]; e < pb.indptr[r + 1]; ++e) {
    const T* y = pb.other[pb.indices[e]];
    T running = 0;
    each_level(bounds, [&](auto l) {
      V even{}, odd{};  // two sums in flight
      int64_t j = bounds.at[l];
      for (; j + 2 * W <= bounds.at[l + 1]; j += 2 * W) {
        even += load<V>(y + j) * load<V>(v + j);
        odd += load<V>(y + j + W) * load<V>(v + j + W);
      }
      if (j < bounds.at[l + 1]) even += load<V>(y + j) * load<V>(v + j);
      running += lane_sum<W, T>(even + odd);
      level[l] = pb.coefs[l] * running;
    });
    T t = 0;
    each_level(bounds, [&](auto l) {
      t += level[l];
      const T scale = coef(l, t);
      for (int64_t j = bounds.at[l]; j < bounds.at[l + 1]; j += W) {
        const V sum = load<V>(out + j) + scale * load<V>(y + j);
        std::memcpy(out + j, &sum, sizeof(V));
      }
    }, /*down=*/true);
  }
}

// A block of rows [begin, end) (contiguous in x), solved in lockstep: each
// conjugate-gradient step's Gram part is one (rows, D) x (D, D) matrix product
// for the whole block (a GEMM, where a product per row is a matrix-vector one:
// the same arithmetic at several times the speed), then each still-active row
// adds its observed part and updates x, r and p. A row stops once its squared
// residual is below the tolerance (it is then left out of the updates); a row
// with no observed item is zero.
template <int W, typename T, typename Layout>
void solve_block(const Problem<T>& pb, Layout bounds, const Tensor& gram, int64_t begin, int64_t end, T* x_all,
                 int64_t cg_steps) {
  const int64_t D = pb.D, B = end - begin, L = static_cast<int64_t>(pb.coefs.size());
  const auto options = gram.options();
  Tensor x = at::from_blob(x_all + begin * D, {B, D}, options);
  Tensor res = at::mm(x, gram).neg_(), p = at::empty({B, D}, options), ap = at::empty({B, D}, options);
  T *rp = res.data_ptr<T>(), *pp = p.data_ptr<T>(), *app = ap.data_ptr<T>(), *xp = x_all + begin * D;
  std::vector<T> level(L), rs(B);
  std::vector<char> active(B);
  // r = b - A x, entry by entry (b and A x apart would cancel near the solution)
  for (int64_t i = 0; i < B; ++i) {
    T *xi = xp + i * D, *ri = rp + i * D;
    if (pb.indptr[begin + i] == pb.indptr[begin + i + 1]) {  // no observed item: the solution is zero
      for (int64_t j = 0; j < D; ++j) xi[j] = ri[j] = 0;
    } else {
      observed_part<W>(pb, bounds, begin + i, xi, ri, level, [&](int64_t l, T t) { return pb.target[l] - t; });
    }
    rs[i] = dot(ri, ri, D);
    active[i] = !(rs[i] < kTolerance);  // NaN goes on, to the output
    for (int64_t j = 0; j < D; ++j) pp[i * D + j] = ri[j];
  }
  for (int64_t step = 0; step < cg_steps; ++step) {
    at::mm_out(ap, p, gram);
    bool any = false;
    for (int64_t i = 0; i < B; ++i) {
      if (!active[i]) continue;
      T *xi = xp + i * D, *ri = rp + i * D, *pi = pp + i * D, *api = app + i * D;
      observed_part<W>(pb, bounds, begin + i, pi, api, level, [](int64_t, T t) { return t; });
      const T a = rs[i] / dot(pi, api, D);
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) {
        xi[j] += a * pi[j];
        ri[j] -= a * api[j];
      }
      const T rs_new = dot(ri, ri, D), beta = rs_new / rs[i];
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) pi[j] = ri[j] + beta * pi[j];
      rs[i] = rs_new;
      active[i] = !(rs_new < kTolerance);
      any = any || active[i];
    }
    if (!any) break;
  }
}

Tensor nested_als_solve(const Tensor& factors, const Tensor& other, const Tensor& gram, const Tensor& indptr,
                        const Tensor& indices, at::IntArrayRef dims, const Tensor& weights, const Tensor& alphas,
                        int64_t cg_steps) {
  check_cpu_float(factors, "factors");
  TORCH_CHECK(other.scalar_type() == factors.scalar_type() && gram.scalar_type() == factors.scalar_type(),
              "other and gram must have factors' dtype");
  Tensor solved = factors.contiguous().clone();
  const Tensor items = rowwise(other), g = gram.contiguous();
  const Tensor offsets = indptr.to(at::kLong).contiguous(), ids = indices.to(at::kLong).contiguous();
  const Tensor w = weights.to(at::kDouble).contiguous(), a = alphas.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(factors.scalar_type(), "nested_als_solve", [&] {
    using T = scalar_t;
    Problem<T> pb{rows_of<T>(items), g.data_ptr<T>(), offsets.data_ptr<int64_t>(), ids.data_ptr<int64_t>(),
                  {}, {}, factors.size(1)};
    const double *wp = w.data_ptr<double>(), *ap = a.data_ptr<double>();
    for (size_t l = 0; l < dims.size(); ++l) pb.coefs.push_back(static_cast<T>(wp[l] * (ap[l] - 1)));
    pb.target.assign(dims.size(), 0);
    double total = 0;
    for (int64_t l = static_cast<int64_t>(dims.size()) - 1; l >= 0; --l)
      pb.target[l] = static_cast<T>(total += wp[l] * ap[l]);
    T* out = solved.data_ptr<T>();
    // the observed part's lanes: one 128-bit register's worth (SSE2, NEON) where every width is a
    // multiple of it (as the usual powers of two), else 2 or 1; the default widths' bounds compiled in
    constexpr int kLanes = 16 / sizeof(T);
    const auto divides = [&](int64_t w) {
      return std::all_of(dims.begin(), dims.end(), [&](int64_t d) { return d % w == 0; });
    };
    const auto run = [&](auto lanes, auto bounds) {
      at::parallel_for(0, factors.size(0), kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; b += kBlock)
          solve_block<decltype(lanes)::value>(pb, bounds, g, b, std::min(end, b + kBlock), out, cg_steps);
      });
    };
    using Default = FixedBounds<0, 4, 8, 16, 32, 64>;
    std::vector<int64_t> at{0};  // 0 = d_0 < d_1 < ... < d_L = D: the level segments
    at.insert(at.end(), dims.begin(), dims.end());
    const Bounds bounds{at.data(), static_cast<int64_t>(dims.size())};
    if (std::equal(dims.begin(), dims.end(), Default::at + 1, std::end(Default::at)))
      run(std::integral_constant<int, kLanes>{}, Default{});
    else if (divides(kLanes))
      run(std::integral_constant<int, kLanes>{}, bounds);
    else if (kLanes > 2 && divides(2))
      run(std::integral_constant<int, 2>{}, bounds);
    else
      run(std::integral_constant<int, 1>{}, bounds);
  });
  return solved;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m) { m.impl("nested_als_solve_cpp", &nested_als_solve); }
