// The paper CNN's first three blocks on the CPU, fused: 3x3 valid convolution (3 -> 4 channels),
// 2x2 max pooling, ReLU, 3x3 valid convolution (4 -> 8 channels), 2x2 max pooling, ReLU, 3x3
// valid convolution (8 -> 8 channels), 2x2 max pooling; and the weight and bias gradients of
// the three convolutions.
//
// Each block computes two convolution rows at a time, a vector of columns at once, and pools them
// without writing the full-resolution output; it keeps the position of the maximum in each
// window (0..3 in row-major order; the first maximum, or a NaN, wins, as in PyTorch's
// max_pool2d). Backward puts the pooled gradient at those positions, two rows at a time, and
// correlates it with the input rows (weight gradient) and with the weights (the second block's
// input gradient). The network input gets no gradient: it is data. Sums run in a fixed order
// (per image in float lanes, over images in double), so results do not depend on the number
// of threads. All tensors are planar (N, C, H, W) and contiguous.
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {

inline Vec relu(Vec v) { return v > 0.0f ? v : 0.0f; }

// Max pooling's choice: `candidate` (window position j) replaces `value` (position k) when it is
// larger or a NaN, so the first maximum wins, as in PyTorch. For floats or vectors of them.
template <typename Value, typename Position>
inline void keep_maximum(Value& value, Position& k, Value candidate, int j) {
  const auto take = candidate > value || candidate != candidate;
  value = take ? candidate : value;
  k = take ? j : k;
}

template <int CIN>
inline int weight_index(int o, int i, int ky, int kx) {
  return ((o * CIN + i) * 3 + ky) * 3 + kx;
}

// One block's geometry: input (H, W), pooled output (PH, PW), convolution columns used 2 * PW.
struct Shape {
  int H, W, PH, PW, used;
  Shape(int h, int w) : H(h), W(w), PH((h - 2) / 2), PW((w - 2) / 2), used(2 * ((w - 2) / 2)) {}
  int64_t in_plane() const { return static_cast<int64_t>(H) * W; }
  int64_t out_plane() const { return static_cast<int64_t>(PH) * PW; }
};

// Convolution rows 2 * ph and 2 * ph + 1 of one image (CIN, H, W) into rows[r][o][c] (row
// stride s.used); with RELU the input is read through a ReLU. The last vector-wide chunk
// overlaps the one before it.
template <int CIN, int COUT, bool RELU>
void conv_two_rows(const float* image, const Shape& s, int ph, const float* w, const float* b,
                   float* rows) {
  const int last = s.used - kLanes;
  for (int c0 = 0;; c0 += kLanes) {
    c0 = std::min(c0, last);
    Vec top[COUT], bottom[COUT];
    for (int o = 0; o < COUT; ++o) top[o] = bottom[o] = splat(b[o]);
    for (int i = 0; i < CIN; ++i)
      for (int ky = 0; ky < 3; ++ky) {
        const float* src = image + i * s.in_plane() + static_cast<int64_t>(2 * ph + ky) * s.W + c0;
        for (int kx = 0; kx < 3; ++kx) {
          Vec upper = load(src + kx), lower = load(src + s.W + kx);
          if (RELU) upper = relu(upper), lower = relu(lower);
          for (int o = 0; o < COUT; ++o) {
            const float wk = w[weight_index<CIN>(o, i, ky, kx)];
            top[o] += upper * wk;
            bottom[o] += lower * wk;
          }
        }
      }
    for (int o = 0; o < COUT; ++o) {
      store(rows + o * s.used + c0, top[o]);
      store(rows + (COUT + o) * s.used + c0, bottom[o]);
    }
    if (c0 == last) break;
  }
}

// One block, forward, for one image: pooled (COUT, PH, PW) and argmax (COUT, PH, PW).
template <int CIN, int COUT, bool RELU>
void block_forward(const float* image, const Shape& s, const float* w, const float* b,
                   float* pooled, uint8_t* argmax, std::vector<float>& rows) {
  rows.resize(2 * COUT * s.used);
  for (int ph = 0; ph < s.PH; ++ph) {
    conv_two_rows<CIN, COUT, RELU>(image, s, ph, w, b, rows.data());
    for (int o = 0; o < COUT; ++o) {
      const float* top = rows.data() + o * s.used;
      const float* bottom = rows.data() + (COUT + o) * s.used;
      const int64_t offset = o * s.out_plane() + static_cast<int64_t>(ph) * s.PW;
      int pw = 0;
      for (; pw + kLanes <= s.PW; pw += kLanes) {  // a vector of windows at a time
        const Vec top0 = load(top + 2 * pw), top1 = load(top + 2 * pw + kLanes);
        const Vec bottom0 = load(bottom + 2 * pw), bottom1 = load(bottom + 2 * pw + kLanes);
        const Vec candidates[3] = {__builtin_shuffle(top0, top1, kOdd),
                                   __builtin_shuffle(bottom0, bottom1, kEven),
                                   __builtin_shuffle(bottom0, bottom1, kOdd)};
        Vec value = __builtin_shuffle(top0, top1, kEven);
        IVec k = IVec{};
        for (int j = 0; j < 3; ++j) keep_maximum(value, k, candidates[j], j + 1);
        store(pooled + offset + pw, value);
        const BVec k8 = __builtin_convertvector(k, BVec);
        std::memcpy(argmax + offset + pw, &k8, sizeof(BVec));
      }
      for (; pw < s.PW; ++pw) {
        const float candidates[3] = {top[2 * pw + 1], bottom[2 * pw], bottom[2 * pw + 1]};
        float value = top[2 * pw];
        uint8_t k = 0;
        for (int j = 0; j < 3; ++j) keep_maximum(value, k, candidates[j], j + 1);
        pooled[offset + pw] = value;
        argmax[offset + pw] = k;
      }
    }
  }
}

// One block, backward, for one image: adds the weight gradient to `lanes` (COUT * CIN * 9
// vectors), the bias gradient to `bias_sum`, and, unless `grad_input` is null, the gradient
// with respect to the block's (ReLU'd) input to grad_input (CIN, H, W).
template <int CIN, int COUT, bool RELU>
void block_backward(const float* image, const Shape& s, const float* w, const float* grad,
                    const uint8_t* argmax, Vec* lanes, double* bias_sum, float* grad_input,
                    std::vector<float>& rows) {
  rows.resize(2 * COUT * s.used);
  Vec bias_lanes[COUT];
  double bias_tail[COUT] = {};
  for (int o = 0; o < COUT; ++o) bias_lanes[o] = splat(0.0f);
  for (int ph = 0; ph < s.PH; ++ph) {
    for (int o = 0; o < COUT; ++o) {
      const int64_t offset = o * s.out_plane() + static_cast<int64_t>(ph) * s.PW;
      float* top = rows.data() + o * s.used;
      float* bottom = rows.data() + (COUT + o) * s.used;
      int pw = 0;
      for (; pw + kLanes <= s.PW; pw += kLanes) {  // a vector of windows at a time
        const Vec value = load(grad + offset + pw);
        BVec k8;
        std::memcpy(&k8, argmax + offset + pw, sizeof(BVec));
        const IVec k = __builtin_convertvector(k8, IVec);
        const Vec zero = splat(0.0f);
        const Vec at[4] = {k == 0 ? value : zero, k == 1 ? value : zero,
                           k == 2 ? value : zero, k == 3 ? value : zero};
        store(top + 2 * pw, __builtin_shuffle(at[0], at[1], kLow));
        store(top + 2 * pw + kLanes, __builtin_shuffle(at[0], at[1], kHigh));
        store(bottom + 2 * pw, __builtin_shuffle(at[2], at[3], kLow));
        store(bottom + 2 * pw + kLanes, __builtin_shuffle(at[2], at[3], kHigh));
        bias_lanes[o] += value;
      }
      for (; pw < s.PW; ++pw) {
        const int k = argmax[offset + pw];
        const float value = grad[offset + pw];
        for (int j = 0; j < 4; ++j) rows[((j >> 1) * COUT + o) * s.used + 2 * pw + (j & 1)] = 0.0f;
        rows[((k >> 1) * COUT + o) * s.used + 2 * pw + (k & 1)] = value;
        bias_tail[o] += value;
      }
    }
    // vector-wide chunks; the last one overlaps the one before, its overlap masked to zero
    for (int c0 = 0; c0 < s.used; c0 += kLanes) {
      const int start = std::min(c0, s.used - kLanes);
      Vec top[COUT], bottom[COUT];
      for (int o = 0; o < COUT; ++o) {
        top[o] = load(rows.data() + o * s.used + start);
        bottom[o] = load(rows.data() + (COUT + o) * s.used + start);
        for (int l = 0; l < c0 - start; ++l) top[o][l] = bottom[o][l] = 0.0f;
      }
      for (int i = 0; i < CIN; ++i)
        for (int ky = 0; ky < 3; ++ky) {
          const int64_t row = i * s.in_plane() + static_cast<int64_t>(2 * ph + ky) * s.W + start;
          for (int kx = 0; kx < 3; ++kx) {
            Vec upper = load(image + row + kx), lower = load(image + row + s.W + kx);
            if (RELU) upper = relu(upper), lower = relu(lower);
            for (int o = 0; o < COUT; ++o)
              lanes[weight_index<CIN>(o, i, ky, kx)] += top[o] * upper + bottom[o] * lower;
            if (grad_input != nullptr) {
              Vec to_upper = splat(0.0f), to_lower = splat(0.0f);
              for (int o = 0; o < COUT; ++o) {
                to_upper += top[o] * w[weight_index<CIN>(o, i, ky, kx)];
                to_lower += bottom[o] * w[weight_index<CIN>(o, i, ky, kx)];
              }
              store(grad_input + row + kx, load(grad_input + row + kx) + to_upper);
              store(grad_input + row + s.W + kx, load(grad_input + row + s.W + kx) + to_lower);
            }
          }
        }
    }
  }
  for (int o = 0; o < COUT; ++o) {
    bias_sum[o] += bias_tail[o];
    for (int l = 0; l < kLanes; ++l) bias_sum[o] += bias_lanes[o][l];
  }
}

template <int CIN, int COUT>
void add_lanes(const std::vector<Vec>& lanes, const double* bias_sum, double* out) {
  for (int k = 0; k < COUT * CIN * 9; ++k) {
    double sum = 0.0;
    for (int l = 0; l < kLanes; ++l) sum += lanes[k][l];
    out[k] = sum;
  }
  for (int o = 0; o < COUT; ++o) out[COUT * CIN * 9 + o] = bias_sum[o];
}

void check(const at::Tensor& t, at::IntArrayRef sizes, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.sizes() == sizes,
              "paper_stem: ", name, " must be a float32 CPU tensor of size ", sizes, ", not ",
              t.sizes());
}

}  // namespace

// x (B, 3, H, W); returns the third block's pooled output before its ReLU (B, 8, PH3, PW3) and
// what backward needs: its argmax, and the first two blocks' pooled outputs before their ReLU
// and argmax.
std::vector<at::Tensor> stem_forward(const at::Tensor& input, const at::Tensor& w1,
                                     const at::Tensor& b1, const at::Tensor& w2,
                                     const at::Tensor& b2, const at::Tensor& w3,
                                     const at::Tensor& b3) {
  TORCH_CHECK(input.dim() == 4 && input.size(1) == 3, "paper_stem: input must be (B, 3, H, W)");
  check(input, input.sizes(), "input");
  check(w1, {4, 3, 3, 3}, "conv1 weight");
  check(b1, {4}, "conv1 bias");
  check(w2, {8, 4, 3, 3}, "conv2 weight");
  check(b2, {8}, "conv2 bias");
  check(w3, {8, 8, 3, 3}, "conv3 weight");
  check(b3, {8}, "conv3 bias");
  const Shape s1(input.size(2), input.size(3));
  const Shape s2(s1.PH, s1.PW);
  const Shape s3(s2.PH, s2.PW);
  TORCH_CHECK(s3.PH >= 1 && s3.used >= kLanes, "paper_stem: images must be at least 78 x 78");
  const at::Tensor x = input.contiguous(), w1c = w1.contiguous(), w2c = w2.contiguous();
  const at::Tensor w3c = w3.contiguous(), b1c = b1.contiguous(), b2c = b2.contiguous();
  const at::Tensor b3c = b3.contiguous();
  const int64_t batch = x.size(0);
  const auto bytes = x.options().dtype(at::kByte);
  at::Tensor pooled1 = at::empty({batch, 4, s1.PH, s1.PW}, x.options());
  at::Tensor argmax1 = at::empty({batch, 4, s1.PH, s1.PW}, bytes);
  at::Tensor pooled2 = at::empty({batch, 8, s2.PH, s2.PW}, x.options());
  at::Tensor argmax2 = at::empty({batch, 8, s2.PH, s2.PW}, bytes);
  at::Tensor pooled3 = at::empty({batch, 8, s3.PH, s3.PW}, x.options());
  at::Tensor argmax3 = at::empty({batch, 8, s3.PH, s3.PW}, bytes);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows;
    for (int64_t n = begin; n < end; ++n) {
      float* p1 = pooled1.data_ptr<float>() + n * 4 * s1.out_plane();
      float* p2 = pooled2.data_ptr<float>() + n * 8 * s2.out_plane();
      block_forward<3, 4, false>(x.data_ptr<float>() + n * 3 * s1.in_plane(), s1,
                                 w1c.data_ptr<float>(), b1c.data_ptr<float>(), p1,
                                 argmax1.data_ptr<uint8_t>() + n * 4 * s1.out_plane(), rows);
      block_forward<4, 8, true>(p1, s2, w2c.data_ptr<float>(), b2c.data_ptr<float>(), p2,
                                argmax2.data_ptr<uint8_t>() + n * 8 * s2.out_plane(), rows);
      block_forward<8, 8, true>(p2, s3, w3c.data_ptr<float>(), b3c.data_ptr<float>(),
                                pooled3.data_ptr<float>() + n * 8 * s3.out_plane(),
                                argmax3.data_ptr<uint8_t>() + n * 8 * s3.out_plane(), rows);
    }
  });
  return {pooled3, argmax3, pooled2, argmax2, pooled1, argmax1};
}

// Gradients of the three convolutions' weights and biases (conv1 weight, conv1 bias, conv2
// weight, ...) from the gradient of stem_forward's first output.
std::vector<at::Tensor> stem_backward(const at::Tensor& grad_pooled3, const at::Tensor& input,
                                      const at::Tensor& pooled1, const at::Tensor& argmax1,
                                      const at::Tensor& pooled2, const at::Tensor& argmax2,
                                      const at::Tensor& argmax3, const at::Tensor& w1,
                                      const at::Tensor& w2, const at::Tensor& w3) {
  const at::Tensor x = input.contiguous(), w1c = w1.contiguous(), w2c = w2.contiguous();
  const at::Tensor w3c = w3.contiguous();
  const at::Tensor g3 = grad_pooled3.to(at::kFloat).contiguous();
  const Shape s1(x.size(2), x.size(3));
  const Shape s2(s1.PH, s1.PW);
  const Shape s3(s2.PH, s2.PW);
  const int64_t batch = x.size(0);
  check(g3, {batch, 8, s3.PH, s3.PW}, "gradient");
  check(pooled1, {batch, 4, s1.PH, s1.PW}, "pooled1");
  check(pooled2, {batch, 8, s2.PH, s2.PW}, "pooled2");
  constexpr int kSize1 = 4 * 3 * 9 + 4, kSize2 = 8 * 4 * 9 + 8, kSize3 = 8 * 8 * 9 + 8;
  constexpr int kSize = kSize1 + kSize2 + kSize3;
  std::vector<double> per_image(batch * kSize);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows, grad1(4 * s1.out_plane()), grad2(8 * s2.out_plane());
    std::vector<Vec> lanes1(4 * 3 * 9), lanes2(8 * 4 * 9), lanes3(8 * 8 * 9);
    for (int64_t n = begin; n < end; ++n) {
      const float* p1 = pooled1.data_ptr<float>() + n * 4 * s1.out_plane();
      const float* p2 = pooled2.data_ptr<float>() + n * 8 * s2.out_plane();
      for (auto* lanes : {&lanes1, &lanes2, &lanes3})
        std::fill(lanes->begin(), lanes->end(), splat(0.0f));
      std::fill(grad1.begin(), grad1.end(), 0.0f);
      std::fill(grad2.begin(), grad2.end(), 0.0f);
      double bias1[4] = {}, bias2[8] = {}, bias3[8] = {};
      block_backward<8, 8, true>(p2, s3, w3c.data_ptr<float>(),
                                 g3.data_ptr<float>() + n * 8 * s3.out_plane(),
                                 argmax3.data_ptr<uint8_t>() + n * 8 * s3.out_plane(),
                                 lanes3.data(), bias3, grad2.data(), rows);
      for (int64_t k = 0; k < 8 * s2.out_plane(); ++k)
        if (!(p2[k] > 0.0f)) grad2[k] = 0.0f;  // the ReLU between blocks 2 and 3
      block_backward<4, 8, true>(p1, s2, w2c.data_ptr<float>(), grad2.data(),
                                 argmax2.data_ptr<uint8_t>() + n * 8 * s2.out_plane(),
                                 lanes2.data(), bias2, grad1.data(), rows);
      for (int64_t k = 0; k < 4 * s1.out_plane(); ++k)
        if (!(p1[k] > 0.0f)) grad1[k] = 0.0f;  // the ReLU between blocks 1 and 2
      block_backward<3, 4, false>(x.data_ptr<float>() + n * 3 * s1.in_plane(), s1,
                                  w1c.data_ptr<float>(), grad1.data(),
                                  argmax1.data_ptr<uint8_t>() + n * 4 * s1.out_plane(),
                                  lanes1.data(), bias1, nullptr, rows);
      double* out = per_image.data() + n * kSize;
      add_lanes<3, 4>(lanes1, bias1, out);
      add_lanes<4, 8>(lanes2, bias2, out + kSize1);
      add_lanes<8, 8>(lanes3, bias3, out + kSize1 + kSize2);
    }
  });
  std::vector<double> total(kSize, 0.0);
  for (int64_t n = 0; n < batch; ++n)
    for (int k = 0; k < kSize; ++k) total[k] += per_image[n * kSize + k];
  std::vector<at::Tensor> grads = {
      at::empty({4, 3, 3, 3}, x.options()), at::empty({4}, x.options()),
      at::empty({8, 4, 3, 3}, x.options()), at::empty({8}, x.options()),
      at::empty({8, 8, 3, 3}, x.options()), at::empty({8}, x.options())};
  auto from = total.begin();
  for (auto& grad : grads) {
    std::copy(from, from + grad.numel(), grad.data_ptr<float>());
    from += grad.numel();
  }
  return grads;
}
