// GRIT-VLP's greedy chain for CPU, as an XLA FFI kernel (see vlp_jax/data/native_chain.py).
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
#include <vector>

#include "xla/ffi/api/ffi.h"

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

class Chain {
 public:
  explicit Chain(int64_t m)
      : m_(m),
        blocks_((m + kBlock - 1) / kBlock),
        stride_((blocks_ + kLanes - 1) / kLanes * kLanes),
        row_max_(m * stride_, kUsed),
        column_max_(m * stride_, kUsed),
        scratch_(blocks_ * m),
        mask_(m) {}

  // sims [m, m] row-major; writes the chain's m positions to order.
  void Run(const float* sims, int64_t start, int32_t* order) {
    StoreBlockMaxima(sims);
    std::fill(mask_.begin(), mask_.end(), 0.0f);
    int64_t cur = start;
    mask_[cur] = kUsed;
    order[0] = static_cast<int32_t>(cur);
    for (int64_t n = 1; n < m_; ++n) {
      if (n % 2) {  // image -> text: the cursor's row
        const float* row = sims + cur * m_;
        cur = LazyHop(row_max_.data() + cur * stride_, [row](int64_t j) { return row[j]; });
      } else {  // text -> image: the cursor's column
        const float* column = sims + cur;
        const int64_t m = m_;
        cur = LazyHop(column_max_.data() + cur * stride_,
                      [column, m](int64_t j) { return column[j * m]; });
      }
      mask_[cur] = kUsed;
      order[n] = static_cast<int32_t>(cur);
    }
  }

 private:
  // row_max_[r * stride_ + b], column_max_[c * stride_ + b]: the maximum of row r (column c)
  // over block b, in one pass over the rows. Column maxima accumulate block-major in scratch_
  // (contiguous, so it vectorises) and are then transposed, so a hop reads one short run.
  void StoreBlockMaxima(const float* sims) {
    std::fill(scratch_.begin(), scratch_.end(), kUsed);
    const int64_t full = m_ / kBlock;
    for (int64_t r = 0; r < m_; ++r) {
      const float* row = sims + r * m_;
      float* acc = scratch_.data() + (r / kBlock) * m_;
      for (int64_t c = 0; c < m_; ++c) acc[c] = Max(acc[c], row[c]);
      float* maxima = row_max_.data() + r * stride_;
      for (int64_t b = 0; b < full; ++b) maxima[b] = LaneMax(row + b * kBlock, kBlock);
      if (full < blocks_) maxima[full] = *std::max_element(row + full * kBlock, row + m_);
    }
    for (int64_t b = 0; b < blocks_; ++b) {
      for (int64_t c = 0; c < m_; ++c) column_max_[c * stride_ + b] = scratch_[b * m_ + c];
    }
  }

  // The best block by its stored maximum, re-read over unused pairs until it is fresh. A row or
  // column is a cursor once, so its maxima are refreshed in place. Ties go to the lowest index.
  template <typename Read>
  int64_t LazyHop(float* maxima, Read read) {
    for (;;) {
      const float top = LaneMax(maxima, stride_);
      if (!(top > kUsed)) {
        // No comparable similarity left (NaN, or every unused one -inf): the lowest unused
        // index, so that the chain stays a permutation and the loop ends.
        return std::find(mask_.begin(), mask_.end(), 0.0f) - mask_.begin();
      }
      const int64_t b = std::find(maxima, maxima + stride_, top) - maxima;
      const int64_t end = std::min(m_, (b + 1) * kBlock);
      int64_t best_j = -1;
      float best = kUsed;
      for (int64_t j = b * kBlock; j < end; ++j) {
        const float v = read(j) + mask_[j];
        if (v > best) {
          best = v;
          best_j = j;
        }
      }
      if (best_j >= 0 && best == top) return best_j;
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(VlpJaxGritChain, GritChainImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
