"""Batched image augmentation on tensors (CPU or GPU): flips, rotation, noise, brightness, contrast.

The paper's Keras ImageDataGenerator used random horizontal + vertical flips and rotation by
0-359 degrees with fill_mode "nearest" (edge pixels repeated). Here the whole batch is
augmented at once with one random draw per image; flips and rotation are one bilinear
`grid_sample` (an affine sampling grid, padding_mode "border": the tensor equivalent of
"nearest").
With `fused_cpu_kernel`, uint8 images on the CPU are rotated and flipped by the compiled kernel
(kernels/rotate.cpp, built by fewcells.training.kernels.loader): the same sampling straight
from the stored bytes to planar floats, equal to grid_sample's result up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewcells.training.kernels import loader


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device):
    """n uniform draws in [low, high) from `generator` (or the global RNG), moved to `device`."""
    source = generator.device if generator is not None else device
    draws = torch.rand(n, generator=generator, device=source)
    return (low + (high - low) * draws).to(device)


def _sampling_grid(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """grid_sample grid (B, H, W, 2) reading each output pixel from input position M @ p.

    `matrix` (B, 2, 2) acts on pixel offsets p = (column, row) from the image centre.
    """
    dtype, device = matrix.dtype, matrix.device
    # Pixel centres in grid_sample's normalised coordinates (align_corners=False).
    xs = (torch.arange(width, dtype=dtype, device=device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=dtype, device=device) * 2 + 1) / height - 1
    # The same matrix on normalised coordinates: rescale the off-diagonal terms when H != W.
    aspect = torch.tensor([[1.0, height / width], [width / height, 1.0]], dtype=dtype)
    normalised = matrix * aspect.to(device)
    # Summed as (B, 2, H, W), rows contiguous, then viewed as (B, H, W, 2): 4x faster.
    from_x = normalised[:, :, 0, None, None] * xs  # (B, 2, 1, W)
    from_y = normalised[:, :, 1, None, None] * ys[:, None]  # (B, 2, H, 1)
    return (from_x + from_y).permute(0, 2, 3, 1)


def rotation_matrix(degrees: torch.Tensor) -> torch.Tensor:
    """Sampling matrices (B, 2, 2) that turn pictures anticlockwise (as displayed) by `degrees`."""
    radians = torch.deg2rad(degrees)
    cos, sin = torch.cos(radians), torch.sin(radians)
    return torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), -2)


ROTATION_SAMPLINGS = ("bilinear", "nearest")


def _resample(images: torch.Tensor, matrix: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Bilinear (or nearest-neighbour) resampling; positions outside the image repeat the
    nearest edge pixel."""
    grid = _sampling_grid(matrix.to(images.dtype), *images.shape[-2:])
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


def _kernel_resamples(images: torch.Tensor) -> bool:
    """Whether the compiled kernel can resample `images` (B, C, H, W): uint8 on the CPU, laid
    out channels-last (a permuted view of stored (B, H, W, C) images), C <= 4, W >= 16."""
    return (
        images.device.type == "cpu"
        and images.dtype == torch.uint8
        and images.dim() == 4
        and images.shape[1] <= 4
        and images.shape[-1] >= 16
        and images.permute(0, 2, 3, 1).is_contiguous()
        and loader.load_kernel()[0] is not None
    )


def rotate_batch(
    images: torch.Tensor, degrees: torch.Tensor, sampling: str = "bilinear"
) -> torch.Tensor:
    """Rotate each float image (B, C, H, W) about its centre by its angle in `degrees` (B,).

    Positive angles turn the picture anticlockwise as displayed (row 0 at the top), like
    torch.rot90 over dims (-2, -1); pixels that come from outside the image repeat the nearest
    edge pixel (Keras fill_mode "nearest"). `sampling` "nearest" reads the nearest input pixel
    (Keras' ImageDataGenerator, scipy order 0) instead of interpolating bilinearly.
    """
    return _resample(images, rotation_matrix(degrees.to(images.device)), sampling)


class BatchAugment(nn.Module):
    """Random augmentation of a batch (B, C, H, W), one independent draw per image.

    Steps, each only when enabled: horizontal and vertical flips (each with probability 1/2),
    rotation by an angle uniform in [0, 360) degrees, brightness (multiply by a factor uniform
    in [1 - brightness, 1 + brightness]), contrast (scale the deviation from the image mean by a
    factor uniform in [1 - contrast, 1 + contrast]), additive gaussian noise of sd `noise_std`.
    The result is clipped to [0, 1]. Deterministic given a torch.Generator. `rotation_sampling`
    "bilinear" interpolates, "nearest" reads the nearest pixel as Keras does. With
    `fused_cpu_kernel`, bilinear flips and rotation of channels-last uint8 CPU images run as
    the compiled kernel.
    """

    def __init__(
        self,
        flips: bool = True,
        rotation: bool = True,
        noise_std: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        fused_cpu_kernel: bool = False,
        rotation_sampling: str = "bilinear",
    ) -> None:
        super().__init__()
        if rotation_sampling not in ROTATION_SAMPLINGS:
            raise ValueError(
                f"train.augment.rotation_sampling: {rotation_sampling!r} is not one of "
                f"{', '.join(ROTATION_SAMPLINGS)}"
            )
        self.fused_cpu_kernel = fused_cpu_kernel
        self.rotation_sampling = rotation_sampling
        self.flips = flips
        self.rotation = rotation
        self.noise_std = noise_std
        self.brightness = brightness
        self.contrast = contrast

    def sample(
        self,
        n: int,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, torch.Tensor]:
        """The random draws for `n` images of `shape` (C, H, W), in the order forward uses."""
        draws: dict[str, torch.Tensor] = {}
        if self.flips:
            draws["flip_h"] = _uniform(n, 0.0, 1.0, generator, device) < 0.5
            draws["flip_v"] = _uniform(n, 0.0, 1.0, generator, device) < 0.5
        if self.rotation:
            draws["degrees"] = _uniform(n, 0.0, 360.0, generator, device)
        if self.brightness > 0:
            draws["brightness"] = _uniform(
                n, 1.0 - self.brightness, 1.0 + self.brightness, generator, device
            )
        if self.contrast > 0:
            draws["contrast"] = _uniform(
                n, 1.0 - self.contrast, 1.0 + self.contrast, generator, device
            )
        if self.noise_std > 0:
            source = generator.device if generator is not None else device
            draws["noise"] = torch.randn((n, *shape), generator=generator, device=source).to(device)
        return draws

    def apply(self, images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """Augment uint8 (0-255) or float ([0, 1]) images with `draws` from sample()."""
        in_kernel = (
            self.rotation
            and self.rotation_sampling == "bilinear"
            and self.fused_cpu_kernel
            and _kernel_resamples(images)
        )
        x = images if in_kernel or images.dtype != torch.uint8 else images.float().div(255.0)
        if self.rotation:
            matrix = rotation_matrix(draws["degrees"])
            if self.flips:
                # Flip then rotate in one resampling: read the rotated position, mirrored.
                signs = (
                    torch.stack((draws["flip_h"], draws["flip_v"]), -1).to(matrix.dtype) * -2 + 1
                )
                matrix = signs[:, :, None] * matrix
            if in_kernel:
                kernel, _ = loader.load_kernel()
                x = kernel.resample(x.permute(0, 2, 3, 1), matrix.float().contiguous())
            else:
                x = _resample(x, matrix, self.rotation_sampling)
        elif self.flips:
            x = x.contiguous()  # torch.where is slow on channels-last strided views
            x = torch.where(draws["flip_h"][:, None, None, None], x.flip(-1), x)
            x = torch.where(draws["flip_v"][:, None, None, None], x.flip(-2), x)
        if self.brightness > 0:
            x = x * draws["brightness"][:, None, None, None]
        if self.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * draws["contrast"][:, None, None, None] + mean
        if self.noise_std > 0:
            x = x + self.noise_std * draws["noise"]
        if self.brightness > 0 or self.contrast > 0 or self.noise_std > 0:
            x = x.clamp(0.0, 1.0)
        return x

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment uint8 (0-255) or float ([0, 1]) images; returns float in [0, 1]."""
        return self.apply(
            images, self.sample(len(images), images.shape[1:], generator, images.device)
        )
