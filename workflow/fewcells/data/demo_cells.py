"""How one demo image is painted: a smear field (red blood cells and one leukocyte of a
class) as optical densities, photographed by a camera model. fewcells.data.demo plans the
data set, crops the photographs and writes the files.

One cohesive thing, longer than the other modules: the painter and the shapes it draws
with (used nowhere else).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

REFERENCE_SIZE = 257  # lengths below are in pixels of a 257 px image, scaled to image_size
CANVAS_MARGIN = 30  # extra canvas around every image, so a crop can move by up to 30 px
_EDGE = 1.2  # width in px of the soft edge of every drawn shape

# Optical densities (R, G, B) at full stain; light * exp(-density) is what the camera sees.
_NUCLEUS_OD = np.array([0.85, 1.85, 0.38], dtype=np.float32)  # dark purple
_RBC_OD = np.array([0.1, 0.25, 0.19], dtype=np.float32)  # pale pink
_PLASMA_OD = np.array([0.0, 0.02, 0.015], dtype=np.float32)
_EOSINOPHIL_GRANULE_OD = np.array([0.04, 0.5, 0.68], dtype=np.float32)  # orange-red
_NEUTROPHIL_GRANULE_OD = np.array([0.22, 0.5, 0.2], dtype=np.float32)  # pink-lilac
# Sensor noise: a random byte picks one of 256 equally likely standard-normal values.
_GAUSSIAN_QUANTILES = special.ndtri((np.arange(256) + 0.5) / 256).astype(np.float32)
_GREY_LAMP = np.array([176.0, 178.0, 172.0])
_BEIGE_LAMP = np.array([170.0, 162.0, 146.0])


@dataclass(frozen=True)
class CellType:
    """Look of one leukocyte class; cell radius range in px of a 257 px image."""

    radius: tuple[float, float]
    cytoplasm_od: tuple[float, float, float]
    nucleus_density: float
    chromatin: str  # "fine", "clumped" or "lacy"


CELL_TYPES = {
    "blast": CellType((56, 70), (0.42, 0.38, 0.04), 0.85, "fine"),
    "lymphocyte": CellType((37, 47), (0.24, 0.17, 0.02), 1.05, "clumped"),
    "neutrophil": CellType((56, 68), (0.1, 0.2, 0.1), 0.95, "clumped"),
    "monocyte": CellType((68, 84), (0.26, 0.27, 0.09), 0.75, "lacy"),
    "eosinophil": CellType((56, 68), (0.08, 0.18, 0.14), 0.9, "clumped"),
}


@dataclass(frozen=True)
class Scene:
    """Optical density of one smear field on the canvas, with its illumination and labels."""

    optical_density: np.ndarray  # (H, W, 3)
    lamp: np.ndarray  # (3,) colour of the light where nothing absorbs
    brightness: np.ndarray  # (H, W) uneven illumination, about 1
    nucleus: np.ndarray  # (H, W) bool
    cell: np.ndarray  # (H, W) bool, nucleus included


@dataclass(frozen=True)
class Frame:
    """Pixel coordinates seen from a point: shifted to it and rotated by `angle`."""

    u: np.ndarray  # (H, W) along the rotated first axis
    v: np.ndarray  # (H, W) along the rotated second axis
    origin: tuple[float, float]  # (row, col) of u = v = 0
    angle: float

    @classmethod
    def around(cls, shape: tuple[int, int], origin: tuple[float, float], angle: float) -> Frame:
        """The frame of an array of `shape` centred on `origin` and turned by `angle`."""
        rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        cos, sin = math.cos(angle), math.sin(angle)
        rows -= origin[0]
        cols -= origin[1]
        return cls(cos * cols + sin * rows, cos * rows - sin * cols, origin, angle)

    def to_pixels(
        self, u: np.ndarray | float, v: np.ndarray | float
    ) -> tuple[np.ndarray | float, np.ndarray | float]:
        """(row, col) of points given in frame coordinates."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return self.origin[0] + sin * u + cos * v, self.origin[1] + cos * u - sin * v

    def region(self, u: float, v: float, reach: float) -> tuple[slice, slice]:
        """Slices of the pixels within `reach` (px) of a frame point, clipped to the array."""
        row, col = self.to_pixels(u, v)
        return _slices_around(row, col, reach, self.u.shape)


def _slices_around(
    row: float, col: float, reach: float, shape: tuple[int, ...]
) -> tuple[slice, slice]:
    """Slices of the pixels within `reach` of (row, col), clipped to an array of `shape`."""
    return (
        slice(min(shape[0], max(0, int(row - reach))), max(0, min(shape[0], int(row + reach) + 2))),
        slice(min(shape[1], max(0, int(col - reach))), max(0, min(shape[1], int(col + reach) + 2))),
    )


@dataclass(frozen=True)
class Nucleus:
    """A drawn nucleus (alpha in [0, 1]) and what its class adds to the cell's look."""

    alpha: np.ndarray
    chromatin: np.ndarray | float = 1.0  # density multiplier inside the nucleus
    cytoplasm: np.ndarray | float = 1.0  # density multiplier of the cytoplasm (vacuoles)
    granules: np.ndarray | float = 0.0  # granule density
    granule_od: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.float32))


def render_scene(label: str, rng: np.random.Generator, *, canvas_size: int, scale: float) -> Scene:
    """Draw red cells and one leukocyte of class `label` roughly centred on the canvas."""
    cell_type = CELL_TYPES[label]
    shape = (canvas_size, canvas_size)
    centre = canvas_size / 2 + rng.normal(0, 6 * scale, size=2)
    radius = rng.uniform(*cell_type.radius) * scale
    box = _slices_around(centre[0], centre[1], 1.25 * radius + 4, shape)
    box_origin = (centre[0] - box[0].start, centre[1] - box[1].start)
    box_shape = (box[0].stop - box[0].start, box[1].stop - box[1].start)
    frame = Frame.around(box_shape, box_origin, rng.uniform(0, 2 * math.pi))

    elongation = rng.uniform(0, 0.1)
    cell = _blob(frame, 0, 0, radius * (1 + elongation), radius * (1 - elongation), 0, rng, 0.02)
    nucleus = _NUCLEUS_DRAWERS[label](frame, radius, rng, scale)
    nucleus_alpha = np.minimum(nucleus.alpha, cell)
    chromatin = nucleus.chromatin * _chromatin_texture(cell_type.chromatin, rng, box_shape, scale)
    cytoplasm = cell * nucleus.cytoplasm
    stain = (rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, size=3)).astype(np.float32)
    leukocyte_od = (
        cytoplasm[..., None] * np.asarray(cell_type.cytoplasm_od, dtype=np.float32)
        + (nucleus_alpha * chromatin * cell_type.nucleus_density)[..., None] * _NUCLEUS_OD
        + (nucleus.granules * cell)[..., None] * nucleus.granule_od
    ) * stain

    red_cells = _red_cells(rng, shape, scale, centre, radius)
    red_cells[box] *= 1 - cell
    red_cell_od = (_RBC_OD * rng.uniform(0.85, 1.15, size=3)).astype(np.float32)
    optical_density = red_cells[..., None] * red_cell_od
    optical_density += _PLASMA_OD * float(rng.uniform(0.5, 1.5))
    optical_density[box] += leukocyte_od
    nucleus_mask = np.zeros(shape, dtype=bool)
    nucleus_mask[box] = nucleus_alpha >= 0.5
    cell_mask = np.zeros(shape, dtype=bool)
    cell_mask[box] = cell >= 0.5
    return Scene(
        optical_density=optical_density,
        lamp=_lamp_colour(rng),
        brightness=_uneven_brightness(rng, canvas_size),
        nucleus=nucleus_mask,
        cell=cell_mask,
    )


def photograph(scene: Scene, rng: np.random.Generator, *, retake: bool = False) -> np.ndarray:
    """Camera: light through the scene, lens blur and sensor noise; uint8 RGB on the canvas.

    A retake is the same scene photographed again: new noise, a slightly different blur,
    brightness and contrast.
    """
    image = np.negative(scene.optical_density)
    np.exp(image, out=image)
    image *= scene.lamp
    image *= scene.brightness[..., None]
    blur = rng.uniform(0.6, 0.9) + (rng.uniform(0.2, 0.5) if retake else 0.0)
    image = ndimage.gaussian_filter(image, sigma=(blur, blur, 0))
    if retake:
        mean = float(image.mean())
        contrast = float(rng.choice([-1, 1]) * rng.uniform(0.04, 0.08))
        brightness = float(rng.choice([-1, 1]) * rng.uniform(0.03, 0.06))
        image = (image - mean) * (1 + contrast) + mean * (1 + brightness)
    noise_table = _GAUSSIAN_QUANTILES * float(rng.uniform(1.5, 2.5))
    image += noise_table[rng.integers(0, len(noise_table), size=image.shape, dtype=np.uint8)]
    image += 0.5  # then truncation rounds
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


def _ellipse(
    frame: Frame, cu: float, cv: float, a: float, b: float, angle: float, reach: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Pixels within `reach` of an ellipse centre, in coordinates where its outline is x²+y²=1."""
    cu, cv, a, b = float(cu), float(cv), float(a), float(b)  # keep float32 arrays float32
    region = frame.region(cu, cv, reach)
    u, v = frame.u[region] - cu, frame.v[region] - cv
    cos, sin = math.cos(angle), math.sin(angle)
    return region, (cos * u + sin * v) / a, (cos * v - sin * u) / b


def _blob(
    frame: Frame,
    cu: float,
    cv: float,
    a: float,
    b: float,
    angle: float,
    rng: np.random.Generator,
    wobble: float,
) -> np.ndarray:
    """Soft-edged ellipse (semi-axes a, b) with a randomly wobbling outline; alpha in [0, 1]."""
    harmonics = (  # outline harmonics 2..5, smaller for higher orders
        wobble / np.arange(1, 5) * rng.standard_normal(4) * np.exp(1j * rng.uniform(0, 6.3, 4))
    ).astype(np.complex64)
    reach = max(a, b) * (1 + float(np.abs(harmonics).sum())) + 2 * _EDGE + 1
    region, x, y = _ellipse(frame, cu, cv, a, b, angle, reach)
    rho = np.hypot(x, y)
    direction = (x + 1j * y) / np.maximum(rho, 1e-6)
    outline = np.ones_like(rho)
    power = direction
    for harmonic in harmonics:
        power = power * direction
        outline += (power * harmonic).real
    alpha = np.zeros_like(frame.u)
    alpha[region] = np.clip((outline - rho) * math.sqrt(a * b) / _EDGE + 0.5, 0, 1)
    return alpha


def _strand(frame: Frame, start: np.ndarray, end: np.ndarray, width: float) -> np.ndarray:
    """Soft-edged capsule from start to end: the thin chromatin filament between lobes."""
    middle = (start + end) / 2
    region = frame.region(*middle, float(np.hypot(*(end - start))) / 2 + width + 2 * _EDGE + 1)
    du, dv = (float(d) for d in end - start)
    u, v = frame.u[region] - float(start[0]), frame.v[region] - float(start[1])
    t = np.clip((u * du + v * dv) / max(du * du + dv * dv, 1e-6), 0, 1)
    distance = np.hypot(u - t * du, v - t * dv)
    alpha = np.zeros_like(frame.u)
    alpha[region] = np.clip((width - distance) / _EDGE + 0.5, 0, 1)
    return alpha


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _chromatin_texture(
    kind: str, rng: np.random.Generator, shape: tuple[int, int], scale: float
) -> np.ndarray:
    """Density multiplier inside the nucleus: fine and even, coarse clumps, or a lacy network."""
    if kind == "fine":
        return 1 + 0.07 * _smooth_noise(rng, shape, max(0.8, 1.2 * scale))
    if kind == "clumped":
        clumps = np.tanh(1.5 * _smooth_noise(rng, shape, max(1.0, 2.6 * scale)))
        return 1 + 0.22 * clumps + 0.05 * _smooth_noise(rng, shape, 0.8)
    strands = np.exp(-((_smooth_noise(rng, shape, max(1.0, 2.2 * scale)) / 0.45) ** 2))
    return 0.78 + 0.4 * strands


def _red_cells(
    rng: np.random.Generator,
    shape: tuple[int, int],
    scale: float,
    centre: np.ndarray,
    cell_radius: float,
) -> np.ndarray:
    """Density map of red blood cells: pale discs with a lighter centre, overlapping a little."""
    density = np.zeros(shape, dtype=np.float32)
    mean_radius = float(rng.uniform(32, 38)) * scale
    n_tries = int(rng.uniform(0.45, 0.8) * shape[0] * shape[1] / (math.pi * mean_radius**2)) + 2
    radii = mean_radius * rng.uniform(0.88, 1.12, n_tries)
    rows = rng.uniform(-0.6 * radii, shape[0] + 0.6 * radii)
    cols = rng.uniform(-0.6 * radii, shape[1] + 0.6 * radii)
    squashes, angles = rng.uniform(0.9, 1.0, n_tries), rng.uniform(0, math.pi, n_tries)
    pallor_depths, pallor_widths = rng.uniform(0.25, 0.7, n_tries), rng.uniform(0.35, 0.5, n_tries)
    thicknesses = rng.uniform(0.8, 1.2, n_tries)
    keep = np.hypot(rows - centre[0], cols - centre[1]) >= 0.8 * cell_radius  # not on the cell
    placed: list[int] = []
    for i in np.flatnonzero(keep):
        if any(
            math.hypot(rows[i] - rows[j], cols[i] - cols[j]) < 1.3 * mean_radius for j in placed
        ):
            continue
        placed.append(i)
        radius, row, col = float(radii[i]), float(rows[i]), float(cols[i])
        region = _slices_around(row, col, radius + 2, shape)
        dy = np.arange(region[0].start, region[0].stop, dtype=np.float32)[:, None] - row
        dx = np.arange(region[1].start, region[1].stop, dtype=np.float32)[None, :] - col
        cos, sin = math.cos(angles[i]), math.sin(angles[i])
        rho = np.hypot(cos * dx + sin * dy, (cos * dy - sin * dx) / float(squashes[i])) / radius
        disc = np.clip((1 - rho) * (radius / _EDGE) + 0.5, 0, 1)
        pallor = float(pallor_depths[i]) * np.exp(-((rho / float(pallor_widths[i])) ** 2))
        rim = 0.15 * np.exp(-(((rho - 0.85) / 0.12) ** 2))
        density[region] += disc * (1 - pallor + rim) * float(thicknesses[i])
    return density


def _lamp_colour(rng: np.random.Generator) -> np.ndarray:
    """Colour of the empty background: between grey and beige, brighter or darker."""
    lamp = _GREY_LAMP + rng.uniform(0, 1) * (_BEIGE_LAMP - _GREY_LAMP)
    return (lamp * rng.uniform(0.93, 1.07) + rng.normal(0, 3, size=3)).astype(np.float32)


def _uneven_brightness(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gentle linear brightness gradient across the field, about 1."""
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gradient_rows, gradient_cols = (float(g) for g in rng.uniform(-0.05, 0.05, size=2))
    return 1 + gradient_rows * ramp[:, None] + gradient_cols * ramp[None, :]


def _granules(
    rng: np.random.Generator, frame: Frame, radius: float, *, per_area: float, sigma: float
) -> np.ndarray:
    """Blurred point field of granules scattered uniformly over a disc covering the cell."""
    count = int(math.pi * radius**2 * per_area)
    distance = radius * np.sqrt(rng.uniform(0, 1, count))
    phi = rng.uniform(0, 2 * math.pi, count)
    rows, cols = frame.to_pixels(distance * np.cos(phi), distance * np.sin(phi))
    rows, cols = np.rint(rows).astype(int), np.rint(cols).astype(int)
    height, width = frame.u.shape
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    points = np.zeros_like(frame.u)
    np.add.at(points, (rows[inside], cols[inside]), rng.uniform(0.6, 1.4, int(inside.sum())))
    return ndimage.gaussian_filter(points, sigma) * np.float32(2 * math.pi * sigma**2)


def _random_offset(rng: np.random.Generator, distance: float, *, exact: bool = False) -> np.ndarray:
    """A 2-d offset in a random direction, uniform in a disc of that radius (or on its circle)."""
    length = distance if exact else distance * math.sqrt(rng.uniform())
    phi = rng.uniform(0, 2 * math.pi)
    return np.array([length * math.cos(phi), length * math.sin(phi)])


def _round_nucleus(
    frame: Frame,
    radius: float,
    rng: np.random.Generator,
    fraction: tuple[float, float],
    squash: float,
    notch_chance: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """An off-centre round/oval nucleus filling `fraction` of the cell radius, maybe notched."""
    share = rng.uniform(*fraction)
    offset = _random_offset(rng, (1 - share) * radius * 0.8)
    size = share * radius
    angle = rng.uniform(0, math.pi)
    alpha = _blob(frame, *offset, size, size * rng.uniform(squash, 1), angle, rng, 0.03)
    if rng.uniform() < notch_chance:
        notch_at = offset + _random_offset(rng, size, exact=True)
        alpha *= 1 - _blob(frame, *notch_at, 0.2 * size, 0.2 * size, 0, rng, 0.0)
    return alpha, offset, size


def _blast_nucleus(frame: Frame, radius: float, rng: np.random.Generator, scale: float) -> Nucleus:
    """Large round/oval nucleus filling most of the cell (fine chromatin), pale nucleoli."""
    alpha, offset, size = _round_nucleus(frame, radius, rng, (0.78, 0.9), 0.85, 0.3)
    chromatin = np.ones_like(frame.u)
    for _ in range(rng.choice(3, p=[0.25, 0.45, 0.3])):
        at = offset + _random_offset(rng, 0.45 * size)
        nucleolus = rng.uniform(0.09, 0.14) * size
        chromatin -= 0.4 * _blob(frame, *at, nucleolus, nucleolus * 0.85, 0, rng, 0.05)
    return Nucleus(alpha, chromatin=chromatin)


def _lymphocyte_nucleus(
    frame: Frame, radius: float, rng: np.random.Generator, scale: float
) -> Nucleus:
    """Round dense nucleus with a darker edge; thin, often eccentric, rim of blue cytoplasm."""
    alpha, offset, size = _round_nucleus(frame, radius, rng, (0.84, 0.94), 0.88, 0.2)
    edge = np.clip(np.hypot(frame.u - offset[0], frame.v - offset[1]) / size, 0, 1) ** 6
    return Nucleus(alpha, chromatin=1 + 0.15 * edge)


def _neutrophil_nucleus(
    frame: Frame, radius: float, rng: np.random.Generator, scale: float
) -> Nucleus:
    """Segmented nucleus: 3-5 lobes on an arc joined by thin strands; fine lilac granules."""
    n_lobes = int(rng.integers(3, 6))
    arc_radius = rng.uniform(0.32, 0.42) * radius
    span = rng.uniform(2.4, 4.0)
    angles = rng.uniform(0, 2 * math.pi) + np.linspace(0, span, n_lobes)
    angles += rng.normal(0, 0.1, n_lobes)
    centres = np.stack([np.cos(angles), np.sin(angles)], axis=1) * arc_radius
    centres *= rng.uniform(0.85, 1.15, size=(n_lobes, 1))
    lobe_size = np.clip(0.5 * arc_radius * span / (n_lobes - 1), 0.22 * radius, 0.32 * radius)
    alpha = np.zeros_like(frame.u)
    for (cu, cv), angle in zip(centres, angles, strict=True):
        a = lobe_size * rng.uniform(0.9, 1.1)
        tilt = angle + rng.normal(0, 0.3)
        lobe = _blob(frame, cu, cv, a, a * rng.uniform(0.6, 0.8), tilt, rng, 0.05)
        alpha = np.maximum(alpha, lobe)
    for first, second in zip(centres[:-1], centres[1:], strict=True):
        alpha = np.maximum(alpha, _strand(frame, first, second, max(1.0, 0.05 * radius)))
    granules = _granules(rng, frame, radius, per_area=1 / 30, sigma=max(0.6, 0.7 * scale))
    return Nucleus(alpha, granules=0.35 * granules, granule_od=_NEUTROPHIL_GRANULE_OD)


def _monocyte_nucleus(
    frame: Frame, radius: float, rng: np.random.Generator, scale: float
) -> Nucleus:
    """Kidney- to horseshoe-shaped nucleus, lacy chromatin, grey-blue cytoplasm, vacuoles."""
    cu, cv = -rng.uniform(0.05, 0.2) * radius, rng.normal(0, 0.05) * radius
    a, b = rng.uniform(0.55, 0.66) * radius, rng.uniform(0.45, 0.56) * radius
    alpha = _blob(frame, cu, cv, a, b, rng.normal(0, 0.2), rng, 0.04)
    depth = rng.uniform(0.35, 0.9)  # deep indentations give a horseshoe
    notch = rng.uniform(0.3, 0.45) * radius
    alpha *= 1 - _blob(frame, cu + a * (1.25 - depth) + 0.5 * notch, cv, notch, notch, 0, rng, 0.03)
    cytoplasm = np.ones_like(frame.u)
    for _ in range(rng.integers(0, 6)):
        at = _random_offset(rng, 0.8 * radius)
        size = rng.uniform(2.5, 5.5) * scale
        cytoplasm -= 0.7 * _blob(frame, *at, size, size, 0, rng, 0.0)
    return Nucleus(alpha, cytoplasm=np.clip(cytoplasm, 0.2, 1))


def _eosinophil_nucleus(
    frame: Frame, radius: float, rng: np.random.Generator, scale: float
) -> Nucleus:
    """Bilobed nucleus; cytoplasm packed with coarse orange-red granules."""
    centre = _random_offset(rng, 0.15 * radius)
    tilt = rng.uniform(0, 2 * math.pi)
    along = np.array([math.cos(tilt), math.sin(tilt)]) * rng.uniform(0.3, 0.38) * radius
    alpha = _strand(frame, centre - along, centre + along, max(1.0, 0.05 * radius))
    for side in (-1, 1):
        lobe = rng.uniform(0.28, 0.34) * radius
        squash = rng.uniform(0.7, 0.9)
        at = centre + side * along
        alpha = np.maximum(alpha, _blob(frame, *at, lobe, lobe * squash, tilt, rng, 0.05))
    granules = _granules(rng, frame, radius, per_area=1 / 13, sigma=max(0.9, 1.7 * scale))
    under_nucleus = 1 - 0.75 * np.clip(1.5 * alpha, 0, 1)
    return Nucleus(
        alpha, granules=0.4 * granules * under_nucleus, granule_od=_EOSINOPHIL_GRANULE_OD
    )


_NUCLEUS_DRAWERS: dict[str, Callable[[Frame, float, np.random.Generator, float], Nucleus]] = {
    "blast": _blast_nucleus,
    "lymphocyte": _lymphocyte_nucleus,
    "neutrophil": _neutrophil_nucleus,
    "monocyte": _monocyte_nucleus,
    "eosinophil": _eosinophil_nucleus,
}
