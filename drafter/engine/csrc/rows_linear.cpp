// Few-row linear layers for CPU decoding: y = x W^T (+ b), x (M, K), W (N, K), float32, AVX2 + FMA.
//
// Why: MKL's kernels for a few rows cost up to ~1.8x one pass over the weights at M = 9-16 rows, yet a decoding
// or verification step of a small model is bound by that one pass (540 MB of fp32 weights for SmolLM2-135M).
// Here every thread streams its share of W's rows once, in L2-sized groups; a block of NT rows stays in L1 while
// up to kRowsInL1 rows of x meet it.
//
// Batch invariance: y[m][n] is always the same sequence of operations (8-lane FMA partial sums over k in order,
// one fixed horizontal sum, a scalar FMA tail, then the bias), whatever M is, which tile holds the row and how
// the rows are split over threads. So a row's output is bit-identical whether it is computed alone (a plain
// decoding step) or among the nodes of a verification tree.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>

namespace {

constexpr int kRowsPerTile = 4;     // rows of x per tile (MT)
constexpr int kWeightsPerTile = 3;  // rows of W per tile (NT): 4 x 3 accumulators + 3 weight vectors + 1 x fit 16 ymm
// Rows of x a W block meets in one pass over W. Past 8 rows the tile is compute-bound, and a second pass (rows
// 9.. meeting the W group again from L2) no longer overlaps the memory stream: one pass for up to 16 rows was
// 5-15 % faster at 9-16 rows (measured, BENCHMARKS.md), although 16 x 576 floats (36 KB) spill from L1 into L2.
constexpr int64_t kRowsInL1 = 16;
constexpr int64_t kGroupBytes = 192 * 1024;  // W rows read from memory once, then re-read from L2 (512 KB)

inline float horizontal_sum(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_shuffle_ps(sum, sum, 0x55));
  return _mm_cvtss_f32(sum);
}

template <int MT, int NT>
void tile(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N) {
  __m256 acc[MT][NT];
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NT; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    if ((k & 15) == 0)  // the next block of W's rows, one cache line a row every other step
      for (int j = 0; j < NT; ++j) _mm_prefetch(reinterpret_cast<const char*>(w + (NT + j) * K + k), _MM_HINT_T0);
    __m256 wv[NT];
    for (int j = 0; j < NT; ++j) wv[j] = _mm256_loadu_ps(w + j * K + k);
    for (int i = 0; i < MT; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * K + k);
      for (int j = 0; j < NT; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MT; ++i) {
    for (int j = 0; j < NT; ++j) {
      float sum = horizontal_sum(acc[i][j]);
      for (int64_t t = k; t < K; ++t) sum = std::fma(x[i * K + t], w[j * K + t], sum);
      y[i * N + j] = bias ? sum + bias[j] : sum;
    }
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, const float*, float*, int64_t);

template <int MT>
TileFn tile_for(int nt) {
  switch (nt) {
    case 1: return tile<MT, 1>;
    case 2: return tile<MT, 2>;
    default: return tile<MT, 3>;
  }
}

TileFn tile_for(int mt, int nt) {
  switch (mt) {
    case 1: return tile_for<1>(nt);
    case 2: return tile_for<2>(nt);
    case 3: return tile_for<3>(nt);
    default: return tile_for<4>(nt);
  }
}

at::Tensor rows_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "rows_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, "rows_linear: float32 only");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "rows_linear: x (M, K), weight (N, K)");
  const auto x_c = x.contiguous();
  const auto w_c = weight.contiguous();
  const int64_t M = x_c.size(0), K = x_c.size(1), N = w_c.size(0);
  const float* bias_ptr = nullptr;
  at::Tensor bias_c;
  if (bias.has_value() && bias->defined()) {
    bias_c = bias->contiguous();
    TORCH_CHECK(bias_c.scalar_type() == at::kFloat && bias_c.numel() == N, "rows_linear: bias (N,) float32");
    bias_ptr = bias_c.data_ptr<float>();
  }
  auto y = at::empty({M, N}, x_c.options());
  const float* xp = x_c.data_ptr<float>();
  const float* wp = w_c.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t blocks = (N + kWeightsPerTile - 1) / kWeightsPerTile;
  // Threads split W's rows (never K, which would change the order of the sums). Each thread walks its rows in
  // L2-sized groups, and within a group it meets up to kRowsInL1 rows of x at a time, so the x rows a W block
  // meets stay in L1 (or L2) while the group is read from memory once.
  const int64_t group_blocks = std::max<int64_t>(1, kGroupBytes / (K * static_cast<int64_t>(sizeof(float)) * kWeightsPerTile));
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; g += group_blocks) {
      const int64_t g_end = std::min(end, g + group_blocks);
      for (int64_t m_group = 0; m_group < M; m_group += kRowsInL1) {
        const int64_t m_end = std::min(M, m_group + kRowsInL1);
        for (int64_t b = g; b < g_end; ++b) {
          const int64_t n0 = b * kWeightsPerTile;
          const int nt = static_cast<int>(std::min<int64_t>(kWeightsPerTile, N - n0));
          for (int64_t m0 = m_group; m0 < m_end; m0 += kRowsPerTile) {
            const int mt = static_cast<int>(std::min<int64_t>(kRowsPerTile, m_end - m0));
            tile_for(mt, nt)(xp + m0 * K, K, wp + n0 * K, bias_ptr ? bias_ptr + n0 : nullptr, yp + m0 * N + n0, N);
          }
        }
      }
    }
  });
  return y;
}

}  // namespace

// torch.ops.drafter.rows_linear: an operator, so torch.compile and torch.library see it as one opaque call.
TORCH_LIBRARY(drafter, m) {
  m.def("rows_linear(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(drafter, CPU, m) {
  m.impl("rows_linear", &rows_linear);
}
