// CPU kernel of prefix_topk (mrl_kernels::prefix_topk_cpp), mirroring
// reference.py beside this file; its schema is defined from spec.py (this file
// only implements it).
//
// Adaptive retrieval without a (B, N) score matrix. Blocks of queries run in
// parallel; for each block of items the narrow scores come from one small
// matrix product (BLAS), and each query keeps a running top-`shortlist` (a heap
// in the reference's order: NaN first, then by score, ties to the lower id) that
// most items leave at one comparison with its worst entry. Excluded items are
// skipped by a cursor into each query's sorted exclusions (items are visited in
// ascending id order). The
// shortlist is then reranked by full-width inner products and the best k kept.
// Scores accumulate in T (float32 or float64); a float16 / bfloat16 narrow table
// is converted block by block.

#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "../common.h"

namespace {

using namespace mrl_kernels;

struct Scored {
  double score;
  int64_t id;
};

// a ranks before b: the reference's order (torch.sort, descending, stable):
// NaN above every number, else the higher score; ties, NaN with NaN too, to
// the lower id. A strict weak order even with NaN scores, as the heap needs.
inline bool ranks_before(const Scored& a, const Scored& b) {
  const bool a_nan = std::isnan(a.score), b_nan = std::isnan(b.score);
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a.score != b.score) return a.score > b.score;
  return a.id < b.id;
}

constexpr int64_t kQueryBlock = 16, kItemBlock = 4096;

template <typename T>
void prefix_topk_impl(const Tensor& query, const Tensor& narrow, const Tensor& item_weight, int64_t k,
                      int64_t shortlist, const int64_t* offsets, const int64_t* excluded, Tensor& scores,
                      Tensor& ids) {
  const int64_t B = query.size(0), D = query.size(1), n_items = narrow.size(0), width = narrow.size(1);
  const Rows<T> Q = rows_of<T>(query), I = rows_of<T>(item_weight);
  const Tensor narrow_query = query.narrow(1, 0, width).contiguous();
  T* score_out = scores.data_ptr<T>();
  int64_t* id_out = ids.data_ptr<int64_t>();
  const int64_t n_blocks = (B + kQueryBlock - 1) / kQueryBlock;
  at::parallel_for(0, n_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<std::vector<Scored>> heaps(kQueryBlock);
    std::vector<std::vector<int64_t>> skip(kQueryBlock);
    std::vector<size_t> cursor(kQueryBlock);
    std::vector<Scored> ranked;
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t q0 = block * kQueryBlock, nq = std::min(kQueryBlock, B - q0);
      for (int64_t r = 0; r < nq; ++r) {
        heaps[r].clear();
        skip[r].assign(excluded + offsets[q0 + r], excluded + offsets[q0 + r + 1]);
        std::sort(skip[r].begin(), skip[r].end());
        cursor[r] = 0;
      }
      const Tensor qs = narrow_query.narrow(0, q0, nq);
      for (int64_t j0 = 0; j0 < n_items; j0 += kItemBlock) {
        const int64_t nj = std::min(kItemBlock, n_items - j0);
        const Tensor block_scores = at::mm(qs, narrow.narrow(0, j0, nj).to(query.scalar_type()).t()).contiguous();
        const T* S = block_scores.data_ptr<T>();
        for (int64_t r = 0; r < nq; ++r) {
          std::vector<Scored>& heap = heaps[r];  // front: the worst kept
          for (int64_t j = 0; j < nj; ++j) {
            const Scored candidate{static_cast<double>(S[r * nj + j]), j0 + j};
            const bool full = static_cast<int64_t>(heap.size()) >= shortlist;
            // most items stop here, at one comparison with the worst kept
            if (full && !ranks_before(candidate, heap.front())) continue;
            const int64_t id = candidate.id;
            while (cursor[r] < skip[r].size() && skip[r][cursor[r]] < id) ++cursor[r];
            if (cursor[r] < skip[r].size() && skip[r][cursor[r]] == id) continue;
            if (full) {
              std::pop_heap(heap.begin(), heap.end(), ranks_before);
              heap.back() = candidate;
            } else {
              heap.push_back(candidate);
            }
            std::push_heap(heap.begin(), heap.end(), ranks_before);
          }
        }
      }
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t b = q0 + r;
        ranked.clear();
        for (const Scored& c : heaps[r]) ranked.push_back({static_cast<double>(dot(Q[b], I[c.id], D)), c.id});
        const int64_t kept = std::min<int64_t>(k, static_cast<int64_t>(ranked.size()));
        std::partial_sort(ranked.begin(), ranked.begin() + kept, ranked.end(), ranks_before);
        for (int64_t i = 0; i < k; ++i) {
          score_out[b * k + i] = i < kept ? static_cast<T>(ranked[i].score) : -std::numeric_limits<T>::infinity();
          id_out[b * k + i] = i < kept ? ranked[i].id : -1;
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor> prefix_topk(const Tensor& query, const Tensor& narrow, const Tensor& item_weight,
                                       int64_t k, int64_t shortlist, const Tensor& exclude_offsets,
                                       const Tensor& exclude_ids) {
  check_cpu_float(query, "query");
  TORCH_CHECK(item_weight.scalar_type() == query.scalar_type(), "item_weight must have query's dtype");
  const Tensor q = query.contiguous(), items = rowwise(item_weight), short_table = rowwise(narrow);
  const Tensor offsets = exclude_offsets.to(at::kLong).contiguous(), excluded = exclude_ids.to(at::kLong).contiguous();
  Tensor scores = at::empty({query.size(0), k}, query.options());
  Tensor ids = at::empty({query.size(0), k}, query.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "prefix_topk", [&] {
    prefix_topk_impl<scalar_t>(q, short_table, items, k, shortlist, offsets.data_ptr<int64_t>(),
                               excluded.data_ptr<int64_t>(), scores, ids);
  });
  return {scores, ids};
}

}  // namespace

TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m) { m.impl("prefix_topk_cpp", &prefix_topk); }
