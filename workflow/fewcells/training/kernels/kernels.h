// The CPU kernels that fewcells.training.kernels.loader builds and loads (bound in module.cpp).
#pragma once

#include <ATen/ATen.h>

#include <vector>

// The paper CNN's first three conv + max pool blocks (paper_stem.cpp).
std::vector<at::Tensor> stem_forward(const at::Tensor& input, const at::Tensor& w1,
                                     const at::Tensor& b1, const at::Tensor& w2,
                                     const at::Tensor& b2, const at::Tensor& w3,
                                     const at::Tensor& b3);
std::vector<at::Tensor> stem_backward(const at::Tensor& grad_pooled3, const at::Tensor& input,
                                      const at::Tensor& pooled1, const at::Tensor& argmax1,
                                      const at::Tensor& pooled2, const at::Tensor& argmax2,
                                      const at::Tensor& argmax3, const at::Tensor& w1,
                                      const at::Tensor& w2, const at::Tensor& w3);

// Bilinear resampling of uint8 channels-last images into planar float images (rotate.cpp).
at::Tensor resample_images(const at::Tensor& images, const at::Tensor& matrices);
