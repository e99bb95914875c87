// Python bindings of the CPU kernels.
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &stem_forward, "the paper CNN's first three conv + max pool blocks");
  m.def("backward", &stem_backward, "weight and bias gradients of forward");
  m.def("resample", &resample_images,
        "uint8 (B, H, W, C) images resampled by (B, 2, 2) matrices into float (B, C, H, W)");
}
