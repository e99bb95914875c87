// The paper CNN's first block on the CPU: 3x3 valid convolution (3 -> 4 channels) fused with
// 2x2 max pooling (floor), and the weight and bias gradients of it.
//
// Forward computes two convolution rows at a time, 16 columns per vector, and pools them
// without writing the full-resolution output; it returns the pooled values (channels-last)
// and the position of the maximum in each window (0..3 in row-major order; the first maximum,
// or a NaN, wins, as in PyTorch's max_pool2d). Backward puts the pooled gradient at those
// positions, two rows at a time, and correlates it with the input rows. The input gradient is
// not computed: the input is data. Sums run in a fixed order (per image in float lanes, over
// images in double), so results do not depend on the number of threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int kIn = 3;
constexpr int kOut = 4;
constexpr int kTaps = 9;
constexpr int kWeights = kOut * kIn * kTaps;
constexpr int kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

inline Vec splat(float x) { return Vec{} + x; }

inline int weight_index(int o, int i, int ky, int kx) { return ((o * kIn + i) * 3 + ky) * 3 + kx; }

// Convolution rows row0 and row0 + 1 of one image (kIn, H, W), columns 0..used_w - 1, into
// rows[r][o][c] (row stride used_w). The last 16-column chunk overlaps the one before it.
void conv_two_rows(const float* image, int H, int W, int row0, const float* w, const float* b,
                   int used_w, float* rows) {
  const int last = used_w - kLanes;
  for (int c0 = 0;; c0 += kLanes) {
    c0 = std::min(c0, last);
    Vec top[kOut], bottom[kOut];
    for (int o = 0; o < kOut; ++o) top[o] = bottom[o] = splat(b[o]);
    for (int i = 0; i < kIn; ++i)
      for (int ky = 0; ky < 3; ++ky) {
        const float* src = image + (static_cast<int64_t>(i) * H + row0 + ky) * W + c0;
        for (int kx = 0; kx < 3; ++kx) {
          const Vec upper = load(src + kx), lower = load(src + W + kx);
          for (int o = 0; o < kOut; ++o) {
            const float wk = w[weight_index(o, i, ky, kx)];
            top[o] += upper * wk;
            bottom[o] += lower * wk;
          }
        }
      }
    for (int o = 0; o < kOut; ++o) {
      store(rows + o * used_w + c0, top[o]);
      store(rows + (kOut + o) * used_w + c0, bottom[o]);
    }
    if (c0 == last) break;
  }
}

void check_input(const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 4 && input.size(1) == kIn && input.scalar_type() == at::kFloat &&
                  input.device().is_cpu(),
              "conv_pool: input must be a float32 CPU tensor (B, 3, H, W)");
  TORCH_CHECK((input.size(3) - 2) / 2 * 2 >= kLanes && input.size(2) >= 4,
              "conv_pool: images must be at least 4 x 18 pixels");
}

}  // namespace

std::vector<at::Tensor> conv_pool_forward(const at::Tensor& input, const at::Tensor& weight,
                                          const at::Tensor& bias) {
  check_input(input);
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({kOut, kIn, 3, 3}) && bias.numel() == kOut &&
                  weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat,
              "conv_pool: weight must be float32 (4, 3, 3, 3) and bias float32 (4,)");
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), b = bias.contiguous();
  const int64_t batch = x.size(0);
  const int H = x.size(2), W = x.size(3);
  const int pooled_h = (H - 2) / 2, pooled_w = (W - 2) / 2, used_w = 2 * pooled_w;
  at::Tensor pooled = at::empty({batch, pooled_h, pooled_w, kOut}, x.options());
  at::Tensor argmax = at::empty({batch, pooled_h, pooled_w, kOut}, x.options().dtype(at::kByte));
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  float* pp = pooled.data_ptr<float>();
  uint8_t* ap = argmax.data_ptr<uint8_t>();
  at::parallel_for(0, batch * pooled_h, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(2 * kOut * used_w), best(kOut * pooled_w);
    std::vector<uint8_t> where(kOut * pooled_w);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / pooled_h;
      const int ph = task % pooled_h;
      conv_two_rows(xp + n * kIn * H * W, H, W, 2 * ph, wp, bp, used_w, rows.data());
      for (int o = 0; o < kOut; ++o) {
        const float* top = rows.data() + o * used_w;
        const float* bottom = rows.data() + (kOut + o) * used_w;
        for (int pw = 0; pw < pooled_w; ++pw) {
          const float candidates[3] = {top[2 * pw + 1], bottom[2 * pw], bottom[2 * pw + 1]};
          float value = top[2 * pw];
          uint8_t k = 0;
          for (int j = 0; j < 3; ++j) {
            const bool take = candidates[j] > value || candidates[j] != candidates[j];
            value = take ? candidates[j] : value;
            k = take ? j + 1 : k;
          }
          best[o * pooled_w + pw] = value;
          where[o * pooled_w + pw] = k;
        }
      }
      float* out = pp + task * pooled_w * kOut;
      uint8_t* arg = ap + task * pooled_w * kOut;
      for (int pw = 0; pw < pooled_w; ++pw)
        for (int o = 0; o < kOut; ++o) {
          out[pw * kOut + o] = best[o * pooled_w + pw];
          arg[pw * kOut + o] = where[o * pooled_w + pw];
        }
    }
  });
  // (B, PH, PW, 4) in memory: the (B, 4, PH, PW) result in channels-last layout
  return {pooled.permute({0, 3, 1, 2}), argmax};
}

std::vector<at::Tensor> conv_pool_backward(const at::Tensor& grad_pooled, const at::Tensor& input,
                                           const at::Tensor& argmax) {
  check_input(input);
  const at::Tensor x = input.contiguous();
  const at::Tensor g = grad_pooled.to(at::kFloat).permute({0, 2, 3, 1}).contiguous();
  const int64_t batch = x.size(0);
  const int H = x.size(2), W = x.size(3);
  const int pooled_h = argmax.size(1), pooled_w = argmax.size(2), used_w = 2 * pooled_w;
  TORCH_CHECK(g.sizes() == argmax.sizes(), "conv_pool: gradient and argmax shapes differ");
  std::vector<double> per_image(batch * (kWeights + kOut));
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const uint8_t* ap = argmax.data_ptr<uint8_t>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(2 * kOut * used_w);
    std::vector<Vec> lanes(kWeights);
    for (int64_t n = begin; n < end; ++n) {
      std::fill(lanes.begin(), lanes.end(), splat(0.0f));
      double bias_sum[kOut] = {};
      const float* image = xp + n * kIn * H * W;
      for (int ph = 0; ph < pooled_h; ++ph) {
        const int64_t task = n * pooled_h + ph;
        const float* grad = gp + task * pooled_w * kOut;
        const uint8_t* arg = ap + task * pooled_w * kOut;
        std::fill(rows.begin(), rows.end(), 0.0f);
        for (int pw = 0; pw < pooled_w; ++pw)
          for (int o = 0; o < kOut; ++o) {
            const int k = arg[pw * kOut + o];
            const float value = grad[pw * kOut + o];
            rows[((k >> 1) * kOut + o) * used_w + 2 * pw + (k & 1)] = value;
            bias_sum[o] += value;
          }
        // 16-column chunks; the last one overlaps the one before, its overlap masked to zero
        for (int c0 = 0; c0 < used_w; c0 += kLanes) {
          const int start = std::min(c0, used_w - kLanes);
          Vec top[kOut], bottom[kOut];
          for (int o = 0; o < kOut; ++o) {
            top[o] = load(rows.data() + o * used_w + start);
            bottom[o] = load(rows.data() + (kOut + o) * used_w + start);
            for (int l = 0; l < c0 - start; ++l) top[o][l] = bottom[o][l] = 0.0f;
          }
          for (int i = 0; i < kIn; ++i)
            for (int ky = 0; ky < 3; ++ky)
              for (int kx = 0; kx < 3; ++kx) {
                const float* src =
                    image + (static_cast<int64_t>(i) * H + 2 * ph + ky) * W + start + kx;
                const Vec upper = load(src), lower = load(src + W);
                for (int o = 0; o < kOut; ++o)
                  lanes[weight_index(o, i, ky, kx)] += top[o] * upper + bottom[o] * lower;
              }
        }
      }
      double* out = per_image.data() + n * (kWeights + kOut);
      for (int k = 0; k < kWeights; ++k) {
        double sum = 0.0;
        for (int l = 0; l < kLanes; ++l) sum += lanes[k][l];
        out[k] = sum;
      }
      for (int o = 0; o < kOut; ++o) out[kWeights + o] = bias_sum[o];
    }
  });
  std::vector<double> total(kWeights + kOut, 0.0);
  for (int64_t n = 0; n < batch; ++n)
    for (int k = 0; k < kWeights + kOut; ++k) total[k] += per_image[n * (kWeights + kOut) + k];
  at::Tensor grad_weight = at::empty({kOut, kIn, 3, 3}, x.options());
  at::Tensor grad_bias = at::empty({kOut}, x.options());
  std::copy(total.begin(), total.begin() + kWeights, grad_weight.data_ptr<float>());
  std::copy(total.begin() + kWeights, total.end(), grad_bias.data_ptr<float>());
  return {grad_weight, grad_bias};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &conv_pool_forward, "3x3 conv (3 -> 4 channels) + 2x2 max pool, with argmax");
  m.def("backward", &conv_pool_backward, "weight and bias gradients of forward");
}
