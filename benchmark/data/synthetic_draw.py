"""Rendering of one synthetic detection image: a cluttered background plus textured shapes.

Design goals (why it looks the way it does):

* Learnable by a small SSD on a CPU in minutes: each class is one shape with its own
  base colour, so both cues help early in training.
* Not solvable by colour alone: colours are jittered and ~10% of objects wear another
  class's colour, and textures (solid/stripes/checker/dots) are drawn independently of
  the class, so the shape has to be learned.
* Sizes span COCO's bands, by object pixel area (COCO's ``area`` is the segment area):
  small ``< 32**2``, medium, large ``> 96**2``. Small objects get the same clutter and
  JPEG artefacts at a fraction of the pixels, so they are harder, as in COCO.
* Occlusion: objects are drawn in sequence, later ones on top. A placement that would
  leave an earlier object less than 40% visible is rejected (re-sampled, eventually
  skipped), so every drawn object is annotated and at most ~60% hidden; the annotation
  is always the full (amodal) box.
* Clutter: gradient + low-frequency colour noise + pixel noise background, distractor
  lines and irregular blobs that are not objects.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring", "diamond", "hexagon")

# One base colour per class, far apart in hue for the first five (the default).
CLASS_COLOURS = np.array(
    [
        (220, 40, 40),  # red
        (40, 90, 230),  # blue
        (245, 205, 30),  # yellow
        (40, 175, 60),  # green
        (170, 60, 210),  # purple
        (250, 130, 20),  # orange
        (30, 205, 205),  # cyan
        (235, 90, 170),  # pink
    ],
    dtype=np.float32,
)

# COCO area bands: (min, max) object pixel area, and how often each is requested.
# Small starts at 10x10 px: smaller objects vanish after resizing to 128 px.
SMALL_MAX, LARGE_MIN = 32**2, 96**2
_BANDS = ((100, SMALL_MAX), (SMALL_MAX, LARGE_MIN), (LARGE_MIN, None))
_BAND_PROBS = (0.42, 0.40, 0.18)
_MIN_VISIBLE = 0.4  # reject placements that would hide > 60% of an earlier object
_PLACEMENT_TRIES = 12
_OTHER_COLOUR_P = 0.1
_TEXTURES = ("solid", "stripes", "checker", "dots")
_TEXTURE_P = (0.4, 0.25, 0.2, 0.15)


@dataclass
class DrawnObject:
    """An annotated object: contiguous ``label``, xyxy ``box`` (continuous px), pixel ``area``."""

    label: int
    box: tuple[int, int, int, int]
    area: int


def render_image(
    rng: np.random.Generator,
    width: int,
    height: int,
    num_classes: int,
    max_objects: int,
    negative_fraction: float,
) -> tuple[Image.Image, list[DrawnObject]]:
    """Draw one image and return it with its annotations.

    Args:
        rng: Per-image generator (so each image is independent of generation order).
        width: Image width in pixels.
        height: Image height in pixels.
        num_classes: Classes drawn, ``SHAPES[:num_classes]``.
        max_objects: Upper bound of objects requested per image.
        negative_fraction: Probability of an image with no objects.

    Returns:
        ``(RGB PIL image [height, width], objects)``.
    """
    canvas = Image.fromarray(_background(rng, width, height))
    _draw_distractors(rng, canvas)
    owner = np.full((height, width), -1, np.int16)  # which object each pixel shows
    visible: list[int] = []
    objects: list[DrawnObject] = []
    n = 0 if rng.random() < negative_fraction else int(rng.integers(1, max_objects + 1))
    has_large = False
    for _ in range(n):
        band = int(rng.choice(3, p=_BAND_PROBS))
        if band == 2 and has_large:
            band = 1  # one large object already fills most of a small image
        label = int(rng.integers(num_classes))
        mask = _sample_mask(rng, SHAPES[label], band, width, height)
        placed = _place(rng, mask, owner, visible, objects)
        if placed is None:
            continue
        x0, y0 = placed
        h, w = mask.shape
        region = owner[y0 : y0 + h, x0 : x0 + w]
        covered = np.bincount(region[mask & (region >= 0)], minlength=len(objects))
        for j, c in enumerate(covered):
            visible[j] -= int(c)
        region[mask] = len(objects)
        texture = _texture(rng, label, num_classes, w, h)
        canvas.paste(
            Image.fromarray(texture), (x0, y0), Image.fromarray(mask.astype(np.uint8) * 255)
        )
        ys, xs = np.nonzero(mask)  # tight box of the full shape (amodal)
        box = (
            x0 + int(xs.min()),
            y0 + int(ys.min()),
            x0 + int(xs.max()) + 1,
            y0 + int(ys.max()) + 1,
        )
        area = int(mask.sum())
        objects.append(DrawnObject(label, box, area))
        visible.append(area)
        has_large |= area > LARGE_MIN

    pixels = np.asarray(canvas, np.float32)
    pixels += 3.0 * _noise(rng, pixels.shape)  # sensor-like noise on top
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), objects


def _place(rng, mask, owner, visible, objects) -> tuple[int, int] | None:
    """Top-left corner where ``mask`` leaves every earlier object >= 40% visible, or None."""
    h, w = mask.shape
    height, width = owner.shape
    for _ in range(_PLACEMENT_TRIES):
        x0 = int(rng.integers(0, width - w + 1))
        y0 = int(rng.integers(0, height - h + 1))
        region = owner[y0 : y0 + h, x0 : x0 + w][mask]
        covered = np.bincount(region[region >= 0], minlength=len(objects))
        if all((visible[j] - c) >= _MIN_VISIBLE * objects[j].area for j, c in enumerate(covered)):
            return x0, y0
    return None


def _sample_mask(rng, shape: str, band: int, width: int, height: int) -> np.ndarray:
    """Boolean ``[h, w]`` mask of ``shape`` whose pixel area falls (roughly) in ``band``."""
    lo, hi = _BANDS[band]
    hi = hi or 0.45 * width * height
    hi = max(hi, lo * 1.01)
    area = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    box_area = area / _fill_ratio(shape)
    aspect = math.exp(rng.uniform(math.log(0.7), math.log(1.4)))  # w / h
    w = int(round(min(max(math.sqrt(box_area * aspect), 6), width - 2)))
    h = int(round(min(max(box_area / w, 6), height - 2)))
    return _shape_mask(shape, w, h, flip=bool(rng.random() < 0.5))


@functools.cache
def _fill_ratio(shape: str) -> float:
    """Fraction of its box a shape covers (measured once), to target a pixel area."""
    return float(_shape_mask(shape, 200, 200, flip=False).mean())


def _shape_mask(shape: str, w: int, h: int, *, flip: bool) -> np.ndarray:
    """Boolean ``[h, w]`` mask of ``shape`` filling a ``w x h`` box."""
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    r = (0, 0, w - 1, h - 1)
    if shape == "circle":
        d.ellipse(r, fill=255)
    elif shape == "square":
        d.rectangle(r, fill=255)
    elif shape == "ring":
        t = max(2.0, 0.25 * min(w, h))
        d.ellipse(r, fill=255)
        d.ellipse((t, t, w - 1 - t, h - 1 - t), fill=0)
    elif shape == "cross":
        tw, th = 0.17 * w, 0.17 * h  # arms are a third of the box wide
        d.rectangle((w / 2 - tw, 0, w / 2 + tw, h - 1), fill=255)
        d.rectangle((0, h / 2 - th, w - 1, h / 2 + th), fill=255)
    else:
        pts = _unit_polygon(shape, flip) * np.array([w - 1, h - 1])
        d.polygon([tuple(p) for p in pts.tolist()], fill=255)
    return np.asarray(im) > 127


def _unit_polygon(shape: str, flip: bool) -> np.ndarray:
    """``[K, 2]`` (x, y) vertices of a polygonal shape normalised to fill the unit square."""
    if shape == "triangle":
        pts = np.array([(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)])
    elif shape == "diamond":
        pts = np.array([(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)])
    else:
        k = 5 if shape == "star" else 6
        step = 2 * math.pi / (2 * k if shape == "star" else k)
        radii = [1.0, 0.45] * k if shape == "star" else [1.0] * k
        pts = np.array(
            [
                (r * math.cos(-math.pi / 2 + i * step), r * math.sin(-math.pi / 2 + i * step))
                for i, r in enumerate(radii)
            ]
        )
        pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))
    if flip:
        pts[:, 1] = 1.0 - pts[:, 1]  # upside down: a second pose, same class
    return pts


def _texture(rng, label: int, num_classes: int, w: int, h: int) -> np.ndarray:
    """uint8 ``[h, w, 3]`` fill: jittered class colour with a class-independent pattern."""
    base = CLASS_COLOURS[label]
    if rng.random() < _OTHER_COLOUR_P:
        base = CLASS_COLOURS[int(rng.integers(num_classes))]  # colour alone must not decide
    colour = np.clip(base * rng.uniform(0.8, 1.15) + rng.normal(0, 15, 3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w]
    kind = _TEXTURES[int(rng.choice(len(_TEXTURES), p=_TEXTURE_P))]
    period = int(rng.integers(3, 7))
    if kind == "stripes":
        angle = rng.choice([0.0, 0.25, 0.5, 0.75]) * math.pi
        pattern = ((xx * math.cos(angle) + yy * math.sin(angle)) // period) % 2
    elif kind == "checker":
        pattern = (xx // period + yy // period) % 2
    elif kind == "dots":
        pattern = ((xx % period) < period / 2) & ((yy % period) < period / 2)
    else:
        pattern = np.zeros((h, w))
    other = 255.0 if rng.random() < 0.5 else 0.0  # pattern lightens or darkens
    s = rng.uniform(0.25, 0.45) * pattern[..., None]
    tex = colour * (1 - s) + other * s + 6.0 * _noise(rng, (h, w, 3))
    return np.clip(tex, 0, 255).astype(np.uint8)


@functools.cache
def _noise_bank() -> np.ndarray:
    """A fixed ``[384, 384, 3]`` float32 standard-normal tile, sampled once per process."""
    return np.random.default_rng(12345).standard_normal((384, 384, 3), dtype=np.float32)


def _noise(rng, shape) -> np.ndarray:
    """Standard normal float32 noise of ``shape`` ``(h, w, 3)``.

    Cut at a random offset from a fixed tile: sampling fresh noise dominated generation
    time, and a random window of one big tile is just as unstructured at these sizes.
    """
    bank = _noise_bank()
    h, w, _ = shape
    if h > bank.shape[0] or w > bank.shape[1]:
        return rng.standard_normal(shape, dtype=np.float32)
    y, x = int(rng.integers(bank.shape[0] - h + 1)), int(rng.integers(bank.shape[1] - w + 1))
    return bank[y : y + h, x : x + w]


def _background(rng, width: int, height: int) -> np.ndarray:
    """uint8 ``[H, W, 3]``: muted two-colour gradient + smooth colour blotches + noise."""
    grey = rng.uniform(70, 190)
    c1, c2 = (0.55 * grey + 0.45 * rng.uniform(30, 225, 3) for _ in range(2))  # muted
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.ogrid[0:height, 0:width]
    t = (xx * math.cos(a) + yy * math.sin(a)).astype(np.float32)
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1.0))[..., None]
    bg = c1.astype(np.float32) * (1 - t) + c2.astype(np.float32) * t
    # Low-frequency blotches: a coarse random grid upsampled bilinearly.
    coarse = rng.normal(0, 22, (4, 4, 3)).astype(np.float32)
    blotches = np.stack(
        [
            np.asarray(Image.fromarray(coarse[..., c], "F").resize((width, height), Image.BILINEAR))
            for c in range(3)
        ],
        axis=-1,
    )
    bg = bg + blotches + rng.uniform(3, 9) * _noise(rng, (height, width, 3))
    return np.clip(bg, 0, 255).astype(np.uint8)


def _draw_distractors(rng, canvas: Image.Image) -> None:
    """Lines and irregular blobs that are not objects (drawn under the objects)."""
    width, height = canvas.size
    d = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 6))):
        pts = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(2)]
        colour = tuple(int(v) for v in rng.uniform(20, 235, 3))
        d.line(pts, fill=colour, width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(4, 0.15 * min(width, height))
        k = int(rng.integers(7, 12))
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        radii = radius * rng.uniform(0.5, 1.0, k)  # jagged: no clean circle or polygon
        pts = [
            (float(cx + r * math.cos(t)), float(cy + r * math.sin(t)))
            for r, t in zip(radii, angles, strict=True)
        ]
        grey = rng.uniform(40, 210)
        colour = tuple(int(0.7 * grey + 0.3 * v) for v in rng.uniform(0, 255, 3))  # desaturated
        d.polygon(pts, fill=colour)
