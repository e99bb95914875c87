import pytest
import torch

from fewcells.training.augment import BatchAugment, rotate_batch, rotation_matrix
from fewcells.training.kernels.loader import load_kernel


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_all_off_is_identity():
    images = torch.randint(0, 256, (4, 3, 17, 17), dtype=torch.uint8)
    off = BatchAugment(flips=False, rotation=False)
    torch.testing.assert_close(off(images, seeded()), images.float() / 255, rtol=0, atol=0)
    floats = torch.rand(4, 3, 17, 17)
    assert torch.equal(off(floats, seeded()), floats)


def test_everything_on_keeps_shape_and_range():
    images = torch.randint(0, 256, (5, 3, 33, 33), dtype=torch.uint8)
    augment = BatchAugment(noise_std=0.3, brightness=0.5, contrast=0.5)
    out = augment(images, seeded())
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images.float() / 255)


@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_rotation_by_right_angles_is_exact(quarter_turns):
    images = torch.rand(2, 3, 9, 9)
    rotated = rotate_batch(images, torch.full((2,), 90.0 * quarter_turns))
    expected = torch.rot90(images, quarter_turns, dims=(-2, -1))
    torch.testing.assert_close(rotated, expected, rtol=0, atol=1e-5)


def test_half_turn_of_a_non_square_image_is_exact():
    images = torch.rand(1, 3, 6, 10)
    rotated = rotate_batch(images, torch.tensor([180.0]))
    torch.testing.assert_close(rotated, images.flip(-1, -2), rtol=0, atol=1e-5)


def test_rotation_repeats_border_pixels_instead_of_black_corners():
    constant = torch.full((8, 3, 21, 21), 0.7)
    rotated = rotate_batch(constant, torch.linspace(0, 350, 8))
    torch.testing.assert_close(rotated, constant)
    out = BatchAugment()(torch.full((6, 3, 21, 21), 200, dtype=torch.uint8), seeded())
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255))


def test_flips_give_the_four_mirror_images_exactly():
    images = torch.rand(64, 3, 5, 7)
    out = BatchAugment(flips=True, rotation=False)(images, seeded())
    variants = [images, images.flip(-1), images.flip(-2), images.flip(-1, -2)]
    seen = set()
    for i in range(len(images)):
        matches = [k for k, v in enumerate(variants) if torch.equal(out[i], v[i])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_flips_and_rotation_are_one_flip_then_rotate():
    # Replays the generator in the order BatchAugment draws: flip_h, flip_v, angle.
    images = torch.rand(6, 3, 11, 11)
    out = BatchAugment()(images, seeded(3))
    generator = seeded(3)
    flip_h = torch.rand(6, generator=generator) < 0.5
    flip_v = torch.rand(6, generator=generator) < 0.5
    angles = torch.rand(6, generator=generator) * 360
    flipped = torch.where(flip_h[:, None, None, None], images.flip(-1), images)
    flipped = torch.where(flip_v[:, None, None, None], flipped.flip(-2), flipped)
    torch.testing.assert_close(out, rotate_batch(flipped, angles), rtol=0, atol=1e-5)


def test_deterministic_given_a_generator():
    images = torch.randint(0, 256, (5, 3, 25, 25), dtype=torch.uint8)
    augment = BatchAugment(noise_std=0.05, brightness=0.2, contrast=0.2)
    assert torch.equal(augment(images, seeded(1)), augment(images, seeded(1)))
    assert not torch.equal(augment(images, seeded(1)), augment(images, seeded(2)))


def test_brightness_factor_stays_in_its_range():
    grey = torch.full((200, 3, 4, 4), 0.5)
    out = BatchAugment(flips=False, rotation=False, brightness=0.2)(grey, seeded())
    per_image = out.mean(dim=(1, 2, 3))
    assert torch.allclose(out, per_image[:, None, None, None].expand_as(out))
    assert per_image.min() >= 0.4 - 1e-6 and per_image.max() <= 0.6 + 1e-6
    assert per_image.max() - per_image.min() > 0.15


def test_contrast_keeps_the_image_mean():
    images = torch.rand(10, 3, 8, 8) * 0.5 + 0.25
    out = BatchAugment(flips=False, rotation=False, contrast=0.5)(images, seeded())
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)))
    spread = out.std(dim=(1, 2, 3)) / images.std(dim=(1, 2, 3))
    assert spread.min() >= 0.5 - 1e-4 and spread.max() <= 1.5 + 1e-4


def test_noise_has_the_requested_spread():
    grey = torch.full((4, 3, 64, 64), 0.5)
    out = BatchAugment(flips=False, rotation=False, noise_std=0.05)(grey, seeded())
    assert (out - grey).std().item() == pytest.approx(0.05, rel=0.05)
    assert (out - grey).mean().abs() < 0.005


def stored(batch: int, height: int, width: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """uint8 images as the store keeps them (B, H, W, C), viewed as the network's (B, C, H, W)."""
    images = torch.randint(0, 256, (batch, height, width, channels), generator=seeded(seed))
    return images.to(torch.uint8).permute(0, 3, 1, 2)


needs_kernel = pytest.mark.skipif(load_kernel()[0] is None, reason=f"CPU kernel {load_kernel()[1]}")


@needs_kernel
@pytest.mark.parametrize(
    ("height", "width", "channels"), [(257, 257, 3), (40, 61, 3), (23, 16, 1), (31, 17, 4)]
)
def test_the_rotation_kernel_samples_as_grid_sample(height, width, channels):
    images = stored(12, height, width, channels)
    fused, plain = BatchAugment(fused_cpu_kernel=True), BatchAugment()
    out = fused(images, seeded(5))
    assert out.is_contiguous() and out.dtype == torch.float32
    # float rounding of the sampling positions only: at most 0.01 grey levels apart
    torch.testing.assert_close(out, plain(images, seeded(5)), rtol=0, atol=5e-5)


@needs_kernel
@pytest.mark.parametrize("quarter_turns", [0, 1, 2, 3])
def test_the_rotation_kernel_turns_by_right_angles_exactly(quarter_turns):
    images = stored(2, 19, 19)
    kernel, _ = load_kernel()
    turned = kernel.resample(
        images.permute(0, 2, 3, 1), rotation_matrix(torch.full((2,), 90.0 * quarter_turns))
    )
    expected = torch.rot90(images.float() / 255, quarter_turns, dims=(-2, -1))
    torch.testing.assert_close(turned, expected, rtol=0, atol=1e-5)


@needs_kernel
def test_the_rotation_kernel_repeats_border_pixels_and_ignores_threads():
    # a constant image stays constant at every angle: no black corners
    constant = torch.full((8, 20, 33, 3), 77, dtype=torch.uint8).permute(0, 3, 1, 2)
    out = BatchAugment(fused_cpu_kernel=True)(constant, seeded())
    torch.testing.assert_close(out, torch.full_like(out, 77 / 255), rtol=0, atol=1e-6)
    various = stored(6, 50, 50, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = BatchAugment(fused_cpu_kernel=True)(various, seeded(4))
        torch.set_num_threads(3)
        several = BatchAugment(fused_cpu_kernel=True)(various, seeded(4))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, several)


def test_inputs_the_kernel_cannot_take_use_grid_sample():
    # float, planar, too narrow: the same results as without the kernel, no error
    fused, plain = BatchAugment(fused_cpu_kernel=True), BatchAugment()
    planar = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    narrow = stored(3, 20, 12)
    for images in (planar.float() / 255, planar, narrow):
        assert torch.equal(fused(images, seeded(1)), plain(images, seeded(1)))
