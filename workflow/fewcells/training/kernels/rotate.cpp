// The training augmentation's rotation and flips on the CPU, from the stored uint8 images
// straight to the network's planar float input: for each output pixel, the source position
// M @ p (p: the pixel's offset from the image centre, M: the image's 2 x 2 sampling matrix) is
// read by bilinear interpolation, positions outside the image clamped to its edge, and the
// value divided by 255. This is grid_sample(x / 255, grid, "bilinear", padding_mode="border",
// align_corners=False) with fewcells.training.augment's sampling grid, without the float copy of the
// input, the grid and the channels-last to planar copy. A vector of output pixels at a time:
// the four neighbours are fetched with one 32-bit gather each (all channels of a pixel at once).
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {

// Bytes to pad after an image so that reading 4 bytes at its last pixel stays inside memory.
constexpr int kPadding = 4;

// The 32 bits at byte offset offsets[l] from base, for each lane l.
inline IVec gather_words(const uint8_t* base, IVec offsets) {
#if defined(__AVX512F__)
  return (IVec)_mm512_i32gather_epi32((__m512i)offsets, base, 1);
#elif defined(__AVX2__)
  return (IVec)_mm256_i32gather_epi32(reinterpret_cast<const int*>(base), (__m256i)offsets, 1);
#else
  IVec words;
  for (int l = 0; l < kLanes; ++l) {
    int32_t word;
    std::memcpy(&word, base + offsets[l], sizeof(word));
    words[l] = word;
  }
  return words;
#endif
}

inline Vec byte_as_float(IVec words, int byte) {
  return __builtin_convertvector((words >> (8 * byte)) & 0xff, Vec);
}

// Source positions along one axis, clamped to [0, size - 1]: the lower neighbour, its weight's
// complement (the fraction) and the upper neighbour (the lower one at the last pixel).
struct Neighbours {
  IVec low, high;
  Vec fraction;
  Neighbours(Vec position, int size) {
    position = position < 0.0f ? 0.0f : position;
    position = position > static_cast<float>(size - 1) ? static_cast<float>(size - 1) : position;
    low = __builtin_convertvector(position, IVec);  // truncation is floor for position >= 0
    fraction = position - __builtin_convertvector(low, Vec);
    high = low - (low < size - 1);  // a true comparison is -1
  }
};

// Row `row` of one image (H, W, C) into out (C, H, W).
void resample_row(const uint8_t* image, int H, int W, int C, const float* m, int row,
                  float* out) {
  Vec lane_offset;
  for (int l = 0; l < kLanes; ++l) lane_offset[l] = static_cast<float>(l);
  const float dy = static_cast<float>(row) + 0.5f - 0.5f * H;
  const float x_base = m[1] * dy + 0.5f * W - 0.5f;
  const float y_base = m[3] * dy + 0.5f * H - 0.5f;
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int last = W - kLanes;
  for (int column = 0;; column += kLanes) {
    column = std::min(column, last);  // the last vector overlaps the one before it
    const Vec dx = lane_offset + (static_cast<float>(column) + 0.5f - 0.5f * W);
    const Neighbours x(m[0] * dx + x_base, W), y(m[2] * dx + y_base, H);
    const IVec low_row = y.low * (W * C), high_row = y.high * (W * C);
    const IVec low_column = x.low * C, high_column = x.high * C;
    const IVec top_left = gather_words(image, low_row + low_column);
    const IVec top_right = gather_words(image, low_row + high_column);
    const IVec bottom_left = gather_words(image, high_row + low_column);
    const IVec bottom_right = gather_words(image, high_row + high_column);
    const Vec wx = x.fraction, wy = y.fraction;
    const Vec w_top_left = (1.0f - wx) * (1.0f - wy), w_top_right = wx * (1.0f - wy);
    const Vec w_bottom_left = (1.0f - wx) * wy, w_bottom_right = wx * wy;
    for (int c = 0; c < C; ++c) {
      const Vec value = byte_as_float(top_left, c) * w_top_left +
                        byte_as_float(top_right, c) * w_top_right +
                        byte_as_float(bottom_left, c) * w_bottom_left +
                        byte_as_float(bottom_right, c) * w_bottom_right;
      store(out + c * plane + static_cast<int64_t>(row) * W + column, value * (1.0f / 255.0f));
    }
    if (column == last) break;
  }
}

}  // namespace

// images uint8 (B, H, W, C) contiguous, C <= 4; matrices float32 (B, 2, 2), row-major, acting
// on (column, row) offsets from the image centre. Returns float (B, C, H, W) in [0, 1].
at::Tensor resample_images(const at::Tensor& images, const at::Tensor& matrices) {
  TORCH_CHECK(images.scalar_type() == at::kByte && images.device().is_cpu() && images.dim() == 4,
              "resample: images must be a uint8 CPU tensor (B, H, W, C)");
  const int64_t batch = images.size(0);
  const int H = images.size(1), W = images.size(2), C = images.size(3);
  TORCH_CHECK(C >= 1 && C <= 4, "resample: images must have 1 to 4 channels, not ", C);
  TORCH_CHECK(W >= kLanes && H >= 1, "resample: images must be at least ", kLanes, " px wide");
  TORCH_CHECK(static_cast<int64_t>(H) * W * C + kPadding < (int64_t{1} << 31),
              "resample: images must have fewer than 2^31 bytes each");
  TORCH_CHECK(matrices.scalar_type() == at::kFloat && matrices.device().is_cpu() &&
                  matrices.sizes() == at::IntArrayRef({batch, 2, 2}),
              "resample: matrices must be a float32 CPU tensor (B, 2, 2)");
  const at::Tensor source = images.contiguous(), m = matrices.contiguous();
  const int64_t image_bytes = static_cast<int64_t>(H) * W * C;
  // The last image's 4-byte reads may pass its end: it is read from a padded copy.
  std::vector<uint8_t> last_image(batch > 0 ? image_bytes + kPadding : 0);
  if (batch > 0)
    std::memcpy(last_image.data(), source.data_ptr<uint8_t>() + (batch - 1) * image_bytes,
                image_bytes);
  at::Tensor out = at::empty({batch, C, H, W}, images.options().dtype(at::kFloat));
  at::parallel_for(0, batch * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t n = k / H;
      const uint8_t* image = n == batch - 1 ? last_image.data()
                                            : source.data_ptr<uint8_t>() + n * image_bytes;
      resample_row(image, H, W, C, m.data_ptr<float>() + 4 * n, static_cast<int>(k % H),
                   out.data_ptr<float>() + n * C * H * W);
    }
  });
  return out;
}
