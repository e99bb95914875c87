// Vector types for the CPU kernels (GCC vector extensions): one register of floats, of int32
// and of bytes, with the shuffle masks the max pooling uses.
#pragma once

#include <cstdint>
#include <cstring>

namespace {

// One vector register of floats: 16 with AVX-512, 8 with AVX2, 4 otherwise.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#define FEWCELLS_LANE_MASKS                                                      \
  kEven = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30},           \
  kOdd = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31},            \
  kLow = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23},               \
  kHigh = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}
#elif defined(__AVX2__)
constexpr int kLanes = 8;
#define FEWCELLS_LANE_MASKS                                                      \
  kEven = {0, 2, 4, 6, 8, 10, 12, 14}, kOdd = {1, 3, 5, 7, 9, 11, 13, 15},       \
  kLow = {0, 8, 1, 9, 2, 10, 3, 11}, kHigh = {4, 12, 5, 13, 6, 14, 7, 15}
#else
constexpr int kLanes = 4;
#define FEWCELLS_LANE_MASKS \
  kEven = {0, 2, 4, 6}, kOdd = {1, 3, 5, 7}, kLow = {0, 4, 1, 5}, kHigh = {2, 6, 3, 7}
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef uint8_t BVec __attribute__((vector_size(kLanes)));

// Lane indices into the 2 * kLanes values of two vectors: the even and the odd ones, and the
// two halves of the interleaving of two vectors.
constexpr IVec FEWCELLS_LANE_MASKS;
#undef FEWCELLS_LANE_MASKS

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

inline Vec splat(float x) { return Vec{} + x; }

}  // namespace
