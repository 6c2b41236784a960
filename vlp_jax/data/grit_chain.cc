// GRIT-VLP's greedy chain for CPU, as an XLA FFI kernel (see vlp_jax/data/native_chain.py),
// and the host's gather of a search space's rows (VlpJaxGatherRows, at the end).
//
// For each search space, with S the [M, M] image -> text similarity matrix and c_0 = start:
//   c_{n+1} = argmax_{k unused} S[c_n, k]   for odd n+1 (image -> nearest unused text: a row)
//   c_{n+1} = argmax_{k unused} S[k, c_n]   for even n+1 (text -> nearest unused image: a column)
// Ties go to the lowest index, as with a full argmax, so the chain equals the JAX strategies'.
//
// Both hops are lazy. One pass over the matrix stores the maximum of every block of kBlock
// entries of every row and of every column, ignoring which pairs are used. A hop re-reads the
// cursor's best block over unused pairs only, until the best block is fresh: stale maxima only
// over-estimate, so that block holds the masked argmax. So the matrix, which rarely stays in
// cache after the matmul, is streamed once; a hop then reads a few blocks (2 cache lines in a
// row, kBlock in a column) instead of a whole row or column.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 32;  // entries per block
constexpr int64_t kLanes = 16;  // independent maxima, so the compiler emits vector max
constexpr float kUsed = -INFINITY;

inline float Max(float a, float b) { return a > b ? a : b; }

// Maximum of x[0, n), n a multiple of kLanes.
inline float LaneMax(const float* x, int64_t n) {
  float lane[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) lane[j] = x[j];
  for (int64_t i = kLanes; i < n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lane[j] = Max(lane[j], x[i + j]);
  }
  return *std::max_element(lane, lane + kLanes);
}

// Three primitives, with AVX-512 forms where the CPU has it (the scalar forms' horizontal
// maxima, one lane at a time, were a third of the pass and of each hop) and portable ones
// otherwise. Both give the same results on finite input.
#if defined(__AVX512F__)
static_assert(kBlock == 2 * kLanes, "the AVX-512 forms read a block as two vectors");

// r[i] = the maximum over the lanes of a[i]: four rounds of shuffles and maxima for all 16 at
// once, where 16 separate horizontal maxima would take four rounds each.
inline __m512 HorizontalMax16(const __m512 a[16]) {
  __m512 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i) {  // each 128-bit lane holds a, b, a, b
    b[i] = _mm512_max_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                         _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  }
  for (int i = 0; i < 4; ++i) {  // each 128-bit lane holds a, b, c, d
    c[i] = _mm512_max_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int i = 0; i < 2; ++i) {  // 128-bit lanes abcd, abcd, efgh, efgh
    d[i] = _mm512_max_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  return _mm512_max_ps(_mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// maxima[b] = the maximum of row[kBlock b, kBlock (b + 1)), for b < blocks.
inline void RowBlockMaxima(const float* row, int64_t blocks, float* maxima) {
  int64_t b = 0;
  for (; b + 16 <= blocks; b += 16) {
    __m512 a[16];
    for (int i = 0; i < 16; ++i) {
      const float* x = row + (b + i) * kBlock;
      a[i] = _mm512_max_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(x + kLanes));
    }
    _mm512_storeu_ps(maxima + b, HorizontalMax16(a));
  }
  for (; b < blocks; ++b) {
    const float* x = row + b * kBlock;
    maxima[b] = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(x + kLanes)));
  }
}

// The maximum of x[0, n) and its lowest index (n when it is NaN), n a multiple of kLanes.
inline std::pair<float, int64_t> ArgMax(const float* x, int64_t n) {
  __m512 m = _mm512_loadu_ps(x);
  for (int64_t i = kLanes; i < n; i += kLanes) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
  const float top = _mm512_reduce_max_ps(m);
  const __m512 t = _mm512_set1_ps(top);
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), t, _CMP_EQ_OQ);
    if (hit) return {top, i + __builtin_ctz(hit)};
  }
  return {top, n};
}

// The maximum of x + mask over a block, NaN never chosen, and its lowest index; (-inf, -1)
// when no entry beats -inf.
inline std::pair<float, int64_t> BlockArgMax(const float* x, const float* mask) {
  const __m512 used = _mm512_set1_ps(kUsed);
  __m512 v[2];
  for (int i = 0; i < 2; ++i) {
    v[i] = _mm512_add_ps(_mm512_loadu_ps(x + i * kLanes), _mm512_loadu_ps(mask + i * kLanes));
    v[i] = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v[i], v[i], _CMP_ORD_Q), used, v[i]);
  }
  const float best = _mm512_reduce_max_ps(_mm512_max_ps(v[0], v[1]));
  if (!(best > kUsed)) return {kUsed, -1};
  const __m512 t = _mm512_set1_ps(best);
  const __mmask16 first = _mm512_cmp_ps_mask(v[0], t, _CMP_EQ_OQ);
  if (first) return {best, __builtin_ctz(first)};
  return {best, kLanes + __builtin_ctz(_mm512_cmp_ps_mask(v[1], t, _CMP_EQ_OQ))};
}
#else
inline void RowBlockMaxima(const float* row, int64_t blocks, float* maxima) {
  for (int64_t b = 0; b < blocks; ++b) maxima[b] = LaneMax(row + b * kBlock, kBlock);
}

inline std::pair<float, int64_t> ArgMax(const float* x, int64_t n) {
  const float top = LaneMax(x, n);
  return {top, std::find(x, x + n, top) - x};
}

inline std::pair<float, int64_t> BlockArgMax(const float* x, const float* mask) {
  int64_t best_j = -1;
  float best = kUsed;
  for (int64_t j = 0; j < kBlock; ++j) {
    const float v = x[j] + mask[j];
    if (v > best) {
      best = v;
      best_j = j;
    }
  }
  return {best, best_j};
}
#endif

class Chain {
 public:
  explicit Chain(int64_t m)
      : m_(m),
        blocks_((m + kBlock - 1) / kBlock),
        stride_((blocks_ + kLanes - 1) / kLanes * kLanes),
        row_max_(m * stride_, kUsed),
        column_max_(m * stride_, kUsed),
        scratch_(blocks_ * m),
        mask_(blocks_ * kBlock, kUsed) {}

  // sims [m, m] row-major; writes the chain's m positions to order.
  void Run(const float* sims, int64_t start, int32_t* order) {
    StoreBlockMaxima(sims);
    std::fill(mask_.begin(), mask_.begin() + m_, 0.0f);  // the padding stays used
    int64_t cur = start;
    mask_[cur] = kUsed;
    order[0] = static_cast<int32_t>(cur);
    const int64_t m = m_;
    for (int64_t n = 1; n < m; ++n) {
      if (n % 2) {  // image -> text: the cursor's row
        const float* row = sims + cur * m;
        cur = LazyHop(
            row_max_.data() + cur * stride_,
            [row](int64_t j, int64_t count, float* out) {
              if (count == kBlock) std::memcpy(out, row + j, kBlock * sizeof(float));
              else std::copy(row + j, row + j + count, out);
            },
            [row](int64_t j) {
              __builtin_prefetch(row + j);
              __builtin_prefetch(row + j + kBlock - 1);
            });
      } else {  // text -> image: the cursor's column
        const float* column = sims + cur;
        cur = LazyHop(
            column_max_.data() + cur * stride_,
            [column, m](int64_t j, int64_t count, float* out) {
              if (count == kBlock) {
                for (int64_t i = 0; i < kBlock; ++i) out[i] = column[(j + i) * m];
              } else {
                for (int64_t i = 0; i < count; ++i) out[i] = column[(j + i) * m];
              }
            },
            [column, m](int64_t j) {
              const int64_t end = std::min(m, j + kBlock);
              for (; j < end; ++j) __builtin_prefetch(column + j * m);
            });
      }
      mask_[cur] = kUsed;
      order[n] = static_cast<int32_t>(cur);
    }
  }

 private:
  // row_max_[r * stride_ + b], column_max_[c * stride_ + b]: the maximum of row r (column c)
  // over block b, in one pass over the rows. Column maxima accumulate block-major in scratch_
  // (contiguous, so it vectorises) and are then transposed a few columns at a time, so that the
  // columns being written stay in L1; a hop then reads one short run.
  void StoreBlockMaxima(const float* sims) {
    const int64_t full = m_ / kBlock;
    for (int64_t r = 0; r < m_; ++r) {
      const float* row = sims + r * m_;
      float* acc = scratch_.data() + (r / kBlock) * m_;
      if (r % kBlock == 0) {
        std::memcpy(acc, row, m_ * sizeof(float));
      } else {
        for (int64_t c = 0; c < m_; ++c) acc[c] = Max(acc[c], row[c]);
      }
      float* maxima = row_max_.data() + r * stride_;
      RowBlockMaxima(row, full, maxima);
      if (full < blocks_) maxima[full] = *std::max_element(row + full * kBlock, row + m_);
    }
    constexpr int64_t kColumns = 16;
    for (int64_t c0 = 0; c0 < m_; c0 += kColumns) {
      const int64_t c1 = std::min(m_, c0 + kColumns);
      for (int64_t b = 0; b < blocks_; ++b) {
        const float* from = scratch_.data() + b * m_;
        for (int64_t c = c0; c < c1; ++c) column_max_[c * stride_ + b] = from[c];
      }
    }
  }

  // The best block by its stored maximum, re-read over unused pairs until it is fresh. A row or
  // column is a cursor once, so its maxima are refreshed in place. Ties go to the lowest index.
  // load(j, count, out) copies the cursor's entries j .. j + count - 1; prefetch(j) starts
  // fetching the block at j.
  template <typename Load, typename Prefetch>
  int64_t LazyHop(float* maxima, Load load, Prefetch prefetch) {
    for (;;) {
      const auto [top, b] = ArgMax(maxima, stride_);
      if (!(top > kUsed) || b == stride_) {
        // No comparable similarity left (NaN, or every unused one -inf): the lowest unused
        // index, so that the chain stays a permutation and the loop ends.
        return std::find(mask_.begin(), mask_.begin() + m_, 0.0f) - mask_.begin();
      }
      // A hop's time is mostly these dependent reads of a matrix that has left the cache. If
      // this block is stale, the runner-up is most often read next: start fetching it now.
      maxima[b] = kUsed;
      const auto [second, next] = ArgMax(maxima, stride_);
      if (second > kUsed && next < stride_) prefetch(next * kBlock);
      float block[kBlock];
      const int64_t count = std::min(kBlock, m_ - b * kBlock);
      if (count < kBlock) std::fill(block + count, block + kBlock, 0.0f);  // masked as used
      load(b * kBlock, count, block);
      const auto [best, j] = BlockArgMax(block, mask_.data() + b * kBlock);
      if (j >= 0 && best == top) return b * kBlock + j;
      maxima[b] = best;
    }
  }

  int64_t m_, blocks_, stride_;
  std::vector<float> row_max_, column_max_, scratch_, mask_;
};

ffi::Error GritChainImpl(ffi::Buffer<ffi::F32> sims, ffi::Buffer<ffi::S32> start,
                         ffi::ResultBuffer<ffi::S32> order) {
  const auto dims = sims.dimensions();
  if (dims.size() != 3 || dims[1] != dims[2]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "sims must be [spaces, M, M]");
  }
  const int64_t spaces = dims[0], m = dims[1];
  if (start.element_count() != static_cast<size_t>(spaces) ||
      order->element_count() != static_cast<size_t>(spaces * m)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "start [spaces] and order [spaces, M]");
  }
  if (m == 0) return ffi::Error::Success();
  Chain chain(m);
  for (int64_t s = 0; s < spaces; ++s) {
    const int64_t first = start.typed_data()[s];
    if (first < 0 || first >= m) {
      return ffi::Error(ffi::ErrorCode::kOutOfRange, "a chain's start is outside [0, M)");
    }
    chain.Run(sims.typed_data() + s * m * m, first, order->typed_data() + s * m);
  }
  return ffi::Error::Success();
}

}  // namespace

// Host side, called through ctypes: a search space's rows out[i] = src[index[i]], i < count,
// of src [n, dim]. The rows lie scattered over the whole buffer, so each is prefetched a few rows
// ahead of its copy (about half of np.take's time here). Returns 1 if every copied value is
// finite, 0 if not, -1 for an index outside [0, n) (nothing is read from it).
extern "C" int VlpJaxGatherRows(const float* __restrict src, int64_t n, int64_t dim,
                                const int64_t* __restrict index, int64_t count,
                                float* __restrict out) {
  constexpr int64_t kAhead = 8;
  for (int64_t i = 0; i < count; ++i) {
    if (index[i] < 0 || index[i] >= n) return -1;
  }
  const auto prefetch = [&](int64_t i) {
    const char* row = reinterpret_cast<const char*>(src + index[i] * dim);
    for (int64_t byte = 0; byte < dim * int64_t{sizeof(float)}; byte += 64) {
      __builtin_prefetch(row + byte);
    }
  };
  for (int64_t i = 0; i < std::min(count, kAhead); ++i) prefetch(i);
  // x * 0 is 0 for finite x and NaN for NaN or ±inf; a sum of such terms cannot overflow.
  float lane[kLanes] = {};
  for (int64_t i = 0; i < count; ++i) {
    if (i + kAhead < count) prefetch(i + kAhead);
    const float* __restrict from = src + index[i] * dim;
    float* __restrict to = out + i * dim;
    int64_t j = 0;
    for (; j + kLanes <= dim; j += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        to[j + l] = from[j + l];
        lane[l] += from[j + l] * 0.0f;
      }
    }
    for (; j < dim; ++j) {
      to[j] = from[j];
      lane[0] += from[j] * 0.0f;
    }
  }
  float bad = 0.0f;
  for (float x : lane) bad += x;
  return bad == 0.0f ? 1 : 0;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(VlpJaxGritChain, GritChainImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
