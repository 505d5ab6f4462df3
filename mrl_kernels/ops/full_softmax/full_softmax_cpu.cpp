// CPU kernels of the nested log-sum-exp over every item
// (mrl_kernels::full_softmax_lse_cpp and its backward), mirroring reference.py
// beside this file; their schemas are defined from spec.py (this file only
// implements them).
//
// Tiles of items x rows of users, never a (B, N) matrix. A tile's width-d_l
// scores are the running sum of ATen GEMMs over the column segments
// [d_{l-1}, d_l) (one width's cost for every width); its logits (scores over
// the temperature, less log_q, -inf at the row's excluded id) are shifted by
// their row's maximum (forward) or by the saved log-sum-exp (backward) and
// exponentiated by one ATen call over all its widths. The forward keeps an
// online log-sum-exp (maximum, sum of exp(logit - maximum)) per row and width.
// The backward turns the tile's softmax weights into the coefficients of each
// column segment (a segment serves every width that covers it) and adds two
// GEMMs a segment: into the users' gradient and into the tile's items' gradient.
//
// Items are split into at most kMaxChunks chunks of whole tiles, the parallel
// tasks: a chunk owns its items' gradient rows (no races) and keeps its own
// partial log-sum-exps and users' gradient, summed in chunk order at the end, so
// that results do not depend on the thread count.

#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "../common.h"

namespace {

using namespace mrl_kernels;

constexpr int64_t kItemTile = 512;  // items of a tile
constexpr int64_t kUserTile = 128;  // users of a tile
constexpr int64_t kMaxChunks = 64;  // parallel tasks at most (each keeps a (B, L) or (B, D) partial)

// The items of chunk k of K over T tiles: tiles [k T / K, (k + 1) T / K).
struct Chunks {
  int64_t N, tiles, count;
  explicit Chunks(int64_t n) : N(n), tiles((n + kItemTile - 1) / kItemTile),
                               count(std::max<int64_t>(1, std::min(kMaxChunks, (n + kItemTile - 1) / kItemTile))) {}
  int64_t first(int64_t k) const { return std::min(N, k * tiles / count * kItemTile); }
  int64_t last(int64_t k) const { return std::min(N, (k + 1) * tiles / count * kItemTile); }
};

// What every tile of a call reads.
template <typename T>
struct Tiles {
  Tensor user;           // (B, D), contiguous
  Tensor items;          // (N, D), rows with contiguous columns
  const int64_t* exclude;  // (B,) an item id per row left out (< 0: none), or null
  const T* log_q;        // (N,) or null
  std::vector<int64_t> dims;
  T inv_t;

  int64_t levels() const { return static_cast<int64_t>(dims.size()); }
  int64_t start(int64_t l) const { return l == 0 ? 0 : dims[l - 1]; }

  // The logits of users [b0, b1) and items [n0, n1) at every width into out
  // ((L, rows, cols), contiguous); dots is (rows, cols) scratch.
  void logits(int64_t b0, int64_t b1, int64_t n0, int64_t n1, Tensor& dots, T* out) const {
    const int64_t rows = b1 - b0, cols = n1 - n0;
    const Tensor u = user.slice(0, b0, b1), e = items.slice(0, n0, n1);
    const T* d = dots.data_ptr<T>();
    for (int64_t l = 0; l < levels(); ++l) {
      const Tensor u_seg = u.slice(1, start(l), dims[l]), e_seg = e.slice(1, start(l), dims[l]).t();
      if (l == 0) {
        at::mm_out(dots, u_seg, e_seg);
      } else {
        dots.addmm_(u_seg, e_seg);
      }
      T* o = out + l * rows * cols;
      for (int64_t r = 0; r < rows; ++r) {
        const T* dr = d + r * cols;
        T* orow = o + r * cols;
        if (log_q) {
          const T* q = log_q + n0;
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) orow[c] = dr[c] * inv_t - q[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) orow[c] = dr[c] * inv_t;
        }
        if (exclude) {
          const int64_t x = exclude[b0 + r] - n0;
          if (x >= 0 && x < cols) orow[x] = -std::numeric_limits<T>::infinity();
        }
      }
    }
  }
};

// Calls visit(k, b0, n0, rows, cols, logits) for every tile of chunks [k0, k1)
// (users [b0, b0 + rows) x items [n0, n0 + cols)), logits the tile's ((L, rows,
// cols), contiguous), which visit may overwrite: one parallel task's walk.
template <typename T, typename Visit>
void for_each_tile(const Tiles<T>& tiles, const Chunks& chunks, int64_t k0, int64_t k1, Visit&& visit) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // the tiles' ATen calls record nothing
  const int64_t B = tiles.user.size(0), L = tiles.levels(), ub = std::min(kUserTile, B);
  const auto options = tiles.user.options();
  Tensor dots_buffer = at::empty({ub * kItemTile}, options), logit_buffer = at::empty({L * ub * kItemTile}, options);
  for (int64_t k = k0; k < k1; ++k) {
    for (int64_t n0 = chunks.first(k); n0 < chunks.last(k); n0 += kItemTile) {
      const int64_t cols = std::min(n0 + kItemTile, chunks.last(k)) - n0;
      for (int64_t b0 = 0; b0 < B; b0 += ub) {
        const int64_t rows = std::min(b0 + ub, B) - b0;
        Tensor dots = dots_buffer.narrow(0, 0, rows * cols).view({rows, cols});
        tiles.logits(b0, b0 + rows, n0, n0 + cols, dots, logit_buffer.data_ptr<T>());
        visit(k, b0, n0, rows, cols, logit_buffer.narrow(0, 0, L * rows * cols));
      }
    }
  }
}

// Adds s * exp(m) into the running (top, total) (the sum is total * exp(top)); an
// empty s leaves it as it is, a NaN propagates.
template <typename T>
inline void absorb(T& top, T& total, T m, T s) {
  if (s == 0) return;
  if (m > top) {
    total = total * std::exp(top - m) + s;
    top = m;
  } else {
    total += s * std::exp(m - top);
  }
}

template <typename T>
void forward_impl(const Tiles<T>& tiles, Tensor& lse) {
  const int64_t B = tiles.user.size(0), N = tiles.items.size(0), L = tiles.levels();
  const Chunks chunks(N);
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<T> tops(chunks.count * B * L, -inf), totals(chunks.count * B * L, 0);
  at::parallel_for(0, chunks.count, 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> shift(std::min(kUserTile, B) * L);
    for_each_tile(tiles, chunks, k0, k1, [&](int64_t k, int64_t b0, int64_t, int64_t rows, int64_t cols,
                                             Tensor tile) {
      T* logits = tile.data_ptr<T>();
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t r = 0; r < rows; ++r) {
          T* x = logits + (l * rows + r) * cols;
          T m = -inf;
          for (int64_t c = 0; c < cols; ++c) m = x[c] > m ? x[c] : m;
          const T s = m == -inf ? T(0) : m;  // a row without a finite logit: exp(-inf) = 0
          shift[r * L + l] = s;
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) x[c] -= s;
        }
      }
      tile.exp_();
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t r = 0; r < rows; ++r) {
          const T* x = logits + (l * rows + r) * cols;
          T s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t c = 0; c < cols; ++c) s += x[c];
          const int64_t at = (k * B + b0 + r) * L + l;
          absorb(tops[at], totals[at], shift[r * L + l], s);
        }
      }
    });
  });
  T* out = lse.data_ptr<T>();
  for (int64_t i = 0; i < B * L; ++i) {  // the chunks' partials in chunk order
    T top = -inf, total = 0;
    for (int64_t k = 0; k < chunks.count; ++k) absorb(top, total, tops[k * B * L + i], totals[k * B * L + i]);
    out[i] = top + std::log(total);
  }
}

template <typename T>
void backward_impl(const Tiles<T>& tiles, const Tensor& grad, const Tensor& lse, Tensor& grad_user,
                   Tensor& grad_items) {
  const int64_t B = tiles.user.size(0), D = tiles.user.size(1), N = tiles.items.size(0), L = tiles.levels();
  const Chunks chunks(N);
  const T inf = std::numeric_limits<T>::infinity();
  const bool want_user = grad_user.defined(), want_items = grad_items.defined();
  const T* g = grad.data_ptr<T>();
  const T* saved = lse.data_ptr<T>();
  const auto options = tiles.user.options();
  Tensor partials = want_user ? at::zeros({chunks.count, B, D}, options) : Tensor();
  at::parallel_for(0, chunks.count, 1, [&](int64_t k0, int64_t k1) {
    for_each_tile(tiles, chunks, k0, k1, [&](int64_t k, int64_t b0, int64_t n0, int64_t rows, int64_t cols,
                                             Tensor tile) {
      T* logits = tile.data_ptr<T>();
      for (int64_t l = 0; l < L; ++l) {  // logit - lse (-inf where the lse is: no item counts)
        for (int64_t r = 0; r < rows; ++r) {
          T* x = logits + (l * rows + r) * cols;
          const T a = saved[(b0 + r) * L + l];
          if (a == -inf) {
            std::fill(x, x + cols, -inf);
            continue;
          }
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) x[c] -= a;
        }
      }
      tile.exp_();
      for (int64_t l = L - 1; l >= 0; --l) {  // d loss / d score, summed over the widths >= l
        for (int64_t r = 0; r < rows; ++r) {
          T* x = logits + (l * rows + r) * cols;
          const T* above = l + 1 < L ? logits + ((l + 1) * rows + r) * cols : nullptr;
          const T c = g[(b0 + r) * L + l] * tiles.inv_t;
          if (above) {
#pragma omp simd
            for (int64_t j = 0; j < cols; ++j) x[j] = x[j] * c + above[j];
          } else {
#pragma omp simd
            for (int64_t j = 0; j < cols; ++j) x[j] *= c;
          }
        }
      }
      const Tensor coefs = tile.view({L, rows, cols});
      for (int64_t l = 0; l < L; ++l) {  // segment l's columns get segment l's coefficients
        const int64_t c0 = tiles.start(l), c1 = tiles.dims[l];
        const Tensor coef = coefs[l];
        if (want_user) {
          Tensor out = partials[k].slice(0, b0, b0 + rows).slice(1, c0, c1);
          out.addmm_(coef, tiles.items.slice(0, n0, n0 + cols).slice(1, c0, c1));
        }
        if (want_items) {
          Tensor out = grad_items.slice(0, n0, n0 + cols).slice(1, c0, c1);
          const Tensor u_seg = tiles.user.slice(0, b0, b0 + rows).slice(1, c0, c1);
          if (b0 == 0) {
            at::mm_out(out, coef.t(), u_seg);
          } else {
            out.addmm_(coef.t(), u_seg);
          }
        }
      }
    });
  });
  if (!want_user) return;
  T* gu = grad_user.data_ptr<T>();
  const T* parts = partials.data_ptr<T>();
  at::parallel_for(0, B, kGrain, [&](int64_t begin, int64_t end) {  // the chunks' partials in chunk order
    for (int64_t b = begin; b < end; ++b) {
      T* out = gu + b * D;
      std::fill(out, out + D, T(0));
      for (int64_t k = 0; k < chunks.count; ++k) {
        const T* part = parts + (k * B + b) * D;
#pragma omp simd
        for (int64_t c = 0; c < D; ++c) out[c] += part[c];
      }
    }
  });
}

template <typename T>
Tiles<T> tiles_of(const Tensor& user, const Tensor& items, const Tensor& exclude, const Tensor& log_q,
                  at::IntArrayRef dims, double temperature) {
  return {user, items, exclude.defined() ? exclude.data_ptr<int64_t>() : nullptr,
          log_q.defined() ? log_q.data_ptr<T>() : nullptr, as_vector(dims), static_cast<T>(1.0 / temperature)};
}

Tensor ids_of(const std::optional<Tensor>& exclude) {
  return exclude.has_value() ? exclude->to(at::kLong).contiguous() : Tensor();
}

Tensor correction_of(const std::optional<Tensor>& log_q, const Tensor& user) {
  return log_q.has_value() ? log_q->to(user.scalar_type()).contiguous() : Tensor();
}

Tensor full_softmax_lse(const Tensor& user, const Tensor& item_weight, const std::optional<Tensor>& exclude,
                        at::IntArrayRef dims, double temperature, const std::optional<Tensor>& log_q) {
  check_cpu_float(user, "user");
  const Tensor u = user.contiguous(), table = rowwise(item_weight), ex = ids_of(exclude), q = correction_of(log_q, user);
  Tensor lse = at::empty({user.size(0), static_cast<int64_t>(dims.size())}, user.options());
  AT_DISPATCH_FLOATING_TYPES(user.scalar_type(), "full_softmax_lse_cpu", [&] {
    forward_impl<scalar_t>(tiles_of<scalar_t>(u, table, ex, q, dims, temperature), lse);
  });
  return lse;
}

std::tuple<Tensor, Tensor> full_softmax_lse_backward(const Tensor& grad, const Tensor& user, const Tensor& item_weight,
                                                     const std::optional<Tensor>& exclude, const Tensor& lse,
                                                     at::IntArrayRef dims, double temperature,
                                                     const std::optional<Tensor>& log_q,
                                                     std::array<bool, 2> output_mask) {
  check_cpu_float(user, "user");
  const Tensor u = user.contiguous(), table = rowwise(item_weight), ex = ids_of(exclude), q = correction_of(log_q, user);
  const Tensor g = grad.to(user.scalar_type()).contiguous(), saved = lse.to(user.scalar_type()).contiguous();
  Tensor grad_user = output_mask[0] ? at::empty(user.sizes(), user.options()) : Tensor();
  Tensor grad_items = output_mask[1] ? at::empty(item_weight.sizes(), item_weight.options()) : Tensor();
  if (output_mask[1] && user.size(0) == 0) grad_items.zero_();
  AT_DISPATCH_FLOATING_TYPES(user.scalar_type(), "full_softmax_lse_backward_cpu", [&] {
    backward_impl<scalar_t>(tiles_of<scalar_t>(u, table, ex, q, dims, temperature), g, saved, grad_user, grad_items);
  });
  const auto kept = [&](bool needed, const Tensor& t) { return needed ? t : at::empty({0}, user.options()); };
  return {kept(output_mask[0], grad_user), kept(output_mask[1], grad_items)};
}

}  // namespace

TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m) {
  m.impl("full_softmax_lse_cpp", &full_softmax_lse);
  m.impl("full_softmax_lse_backward_cpp", &full_softmax_lse_backward);
}
