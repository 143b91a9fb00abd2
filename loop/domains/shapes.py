"""A procedurally rendered task for development: 12 classes of shapes, shipped as code, not data.

No one tuned the trainer's defaults on it (they were tuned on digits), so it is the second task of
the benchmark: a search that only works on digits shows here. Every image is RGB: a shape in a
random colour (colour never tells the class) over a textured background of another random colour,
with random position, scale, rotation, filled or outline stroke, a little affine distortion, a few
distractor strokes and Gaussian noise. Classes are imbalanced: frequencies fall geometrically from
`imbalance` x (the first class) to 1 x (the last).

The same (count, image_size, seed, imbalance) always give the same bytes (one numpy Generator).
Sample index stands for age (later = newer), and later samples drift: noise, distortion and the
extra distractor strokes grow linearly with the index, up to 1.5 x the first sample's for the
newest, so the delta and drift probes see a slightly harder, shifted slice.

Difficulty is set so the digits recipe (config/trainer/shapes.yaml: resnet10t, 32 px, 10 epochs)
lands near 0.82 validation accuracy: headroom for a search. Harder settings (stronger background
blotches, lower contrast) left it near 0.28 in 10 epochs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from loop.domains.base import SampleSet, SpicaDomain
from loop.errors import DomainError

MIN_PER_CLASS = 30            # count must allow this many images per class on average
MIN_RAREST = 10               # the rarest class still needs a few images in every split
MAX_IMBALANCE = 10.0
SUPERSAMPLE = 2               # shapes are drawn at 2x and area-filtered down: smooth, sub-pixel edges
MAX_CLUTTER = 4               # distractor strokes drawn per image, at most
CHUNK = 512                   # images composed at once (bounds memory at large image sizes)
DRIFT = 0.5                   # the newest sample's noise/distortion/clutter is (1 + DRIFT) x the oldest's


# ------------------------------------------------------------------ templates ----
# Each class is a list of closed contours around the origin, radius about 1; two contours make a
# hole (cv2 fills with the even-odd rule).

def _rotation(a: float) -> np.ndarray:
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int = 48, ry: float | None = None) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + r * np.cos(t), cy + (r if ry is None else ry) * np.sin(t)], axis=1)


def _ngon(k: int, r: float = 1.0) -> np.ndarray:
    return _arc(0, 0, r, -math.pi / 2, 1.5 * math.pi - 2 * math.pi / k, k)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    outer, inside = _ngon(points), _ngon(points, inner) @ _rotation(math.pi / points).T
    return np.stack([outer, inside], axis=1).reshape(-1, 2)


def _crescent(d: float = 0.45, r2: float = 0.85) -> np.ndarray:
    """The unit disc minus a disc of radius r2 centred at (d, 0), as one polygon."""
    x = (1 + d * d - r2 * r2) / (2 * d)
    y = math.sqrt(1 - x * x)
    outer = _arc(0, 0, 1, math.atan2(y, x), 2 * math.pi - math.atan2(y, x))
    inner_a = math.atan2(y, x - d)
    inner = _arc(d, 0, r2, 2 * math.pi - inner_a, inner_a)
    return np.concatenate([outer, inner])


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y - 2.5], axis=1) / 16.5


def _cross(w: float = 0.34) -> np.ndarray:
    a = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1)]
    return np.array(a + [(-x, -y) for x, y in a], dtype=np.float64)


def _arrow() -> np.ndarray:
    return np.array([(-1, -0.2), (0.15, -0.2), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.2), (-1, 0.2)])


TEMPLATES: dict[str, list[np.ndarray]] = {
    "circle": [_ngon(48)],
    "ellipse": [_arc(0, 0, 1, 0, 2 * math.pi, ry=0.5)],
    "triangle": [_ngon(3)],
    "square": [_ngon(4)],
    "pentagon": [_ngon(5)],
    "hexagon": [_ngon(6)],
    "star": [_star()],
    "cross": [_cross()],
    "ring": [_ngon(48), _ngon(48, 0.55)],
    "arrow": [_arrow()],
    "crescent": [_crescent()],
    "heart": [_heart()],
}
CLASS_NAMES = list(TEMPLATES)


# ------------------------------------------------------------------ sampling ----

def class_counts(count: int, classes: int, imbalance: float) -> np.ndarray:
    """Images per class, falling geometrically from `imbalance` x to 1 x; they sum to `count`."""
    weights = np.geomspace(imbalance, 1.0, classes)
    counts = np.floor(count * weights / weights.sum()).astype(np.int64)
    counts[: count - counts.sum()] += 1          # the rounding remainder goes to the commonest
    return counts


def _colours(rng: np.random.Generator, value: np.ndarray, saturation: float) -> np.ndarray:
    """Random hue and saturation (up to `saturation`) around a given brightness (N,) in [0, 1]: (N, 3)."""
    chroma = rng.uniform(-1, 1, (len(value), 3))
    chroma -= chroma.mean(axis=1, keepdims=True)
    return np.clip(value[:, None] + rng.uniform(0, saturation, (len(value), 1)) * chroma, 0, 1)


def _draw_params(rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
    """Every per-image random choice, drawn up front so the stream never depends on pixel values."""
    grow = 1 + DRIFT * np.linspace(0, 1, n)                       # the drift: later = harder
    bg_v = rng.uniform(0.2, 0.8, n)
    contrast = rng.uniform(0.3, 0.6, n) * np.where(bg_v < 0.5, 1, -1)
    radius = rng.uniform(0.28, 0.44, n) * size
    margin = rng.uniform(0.7, 1.0, n) * radius                 # below radius: a shape may leave the frame a bit
    stretch = np.exp(rng.uniform(-0.1, 0.1, (n, 2)) * grow[:, None])
    return {
        "bg": _colours(rng, bg_v, 0.25), "fg": _colours(rng, bg_v + contrast, 0.35),
        "clutter": _colours(rng, bg_v + contrast * rng.uniform(0.6, 1.2, n), 0.35),
        "angle": rng.uniform(0, 2 * math.pi, n), "radius": radius,
        "centre": margin[:, None] + rng.uniform(0, 1, (n, 2)) * (size - 2 * margin)[:, None],
        "stretch": stretch, "shear": rng.uniform(-0.15, 0.15, n) * grow,
        "filled": rng.uniform(0, 1, n) < 0.6,
        "stroke": rng.integers(3, 6, n) * max(1, size // 32),
        "line_xy": rng.uniform(0, size, (n, MAX_CLUTTER, 2)),
        "line_angle": rng.uniform(0, 2 * math.pi, (n, MAX_CLUTTER)),
        "line_len": rng.uniform(3, 9, (n, MAX_CLUTTER)) * size / 32,
        "clutter_n": np.minimum(MAX_CLUTTER, rng.integers(0, 2, n) + np.round(rng.uniform(0, 1.5, n) * grow)),
        "blotch": rng.normal(0, 0.05, (n, 4, 4, 3)),
        "stripe": np.stack([rng.uniform(0, 0.04, n), rng.uniform(0, math.pi, n),
                            rng.uniform(3, 8, n) * size / 32, rng.uniform(0, 2 * math.pi, n)], axis=1),
        "sigma": rng.uniform(0.02, 0.05, n) * grow,
    }


# ------------------------------------------------------------------ drawing ----

def _shape_mask(contours: list[np.ndarray], p: dict[str, np.ndarray], i: int, size: int) -> np.ndarray:
    """The shape's coverage (size, size) in [0, 1]."""
    import cv2  # lazily: importing loop.domains stays light

    sx, sy = p["stretch"][i]
    warp = _rotation(p["angle"][i]) @ np.array([[sx, p["shear"][i]], [0.0, sy]]) * p["radius"][i]
    pts = [np.round((c @ warp.T + p["centre"][i]) * SUPERSAMPLE * 16).astype(np.int32) for c in contours]
    big = np.zeros((size * SUPERSAMPLE,) * 2, np.uint8)
    if p["filled"][i]:
        cv2.fillPoly(big, pts, 255, cv2.LINE_AA, shift=4)
    else:
        cv2.polylines(big, pts, True, 255, int(p["stroke"][i]), cv2.LINE_AA, shift=4)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _clutter_mask(p: dict[str, np.ndarray], i: int, size: int) -> np.ndarray:
    """A few short distractor strokes (size, size) in [0, 1]."""
    import cv2

    mask = np.zeros((size, size), np.uint8)
    m = int(p["clutter_n"][i])
    starts = p["line_xy"][i, :m]
    ends = starts + p["line_len"][i, :m, None] * np.stack([np.cos(p["line_angle"][i, :m]),
                                                          np.sin(p["line_angle"][i, :m])], axis=1)
    for a, b in zip(np.round(starts * 16).astype(int), np.round(ends * 16).astype(int)):
        cv2.line(mask, tuple(a.tolist()), tuple(b.tolist()), 255, 1, cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255


def _background(p: dict[str, np.ndarray], i: int, size: int, grid: np.ndarray) -> np.ndarray:
    """Base colour + smooth colour blotches + faint stripes: (size, size, 3)."""
    import cv2

    blotch = cv2.resize(p["blotch"][i].astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    amp, angle, period, phase = p["stripe"][i]
    stripes = amp * np.sin(2 * math.pi / period * (grid[0] * math.cos(angle) + grid[1] * math.sin(angle)) + phase)
    return p["bg"][i].astype(np.float32) + blotch + stripes[:, :, None].astype(np.float32)


def _compose(rng: np.random.Generator, labels: np.ndarray, p: dict[str, np.ndarray], lo: int, hi: int,
             size: int) -> np.ndarray:
    """Images lo..hi as (hi - lo, size, size, 3) uint8."""
    grid = np.mgrid[0:size, 0:size].astype(np.float32)[::-1]     # x, y
    out = np.empty((hi - lo, size, size, 3), np.float32)
    for k, i in enumerate(range(lo, hi)):
        shape = _shape_mask(TEMPLATES[CLASS_NAMES[labels[i]]], p, i, size)[:, :, None]
        clutter = _clutter_mask(p, i, size)[:, :, None]
        img = _background(p, i, size, grid) * (1 - shape) + p["fg"][i].astype(np.float32) * shape
        out[k] = img * (1 - clutter) + p["clutter"][i].astype(np.float32) * clutter
    out += rng.standard_normal(out.shape, dtype=np.float32) * p["sigma"][lo:hi, None, None, None].astype(np.float32)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def render_shapes(count: int = 4000, image_size: int = 32, seed: int = 0, imbalance: float = 4.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(images (count, size, size, 3) uint8, labels (count,) int64), the same bytes for the same args."""
    rng = np.random.default_rng(seed)
    counts = class_counts(count, len(CLASS_NAMES), imbalance)
    labels = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES), dtype=np.int64), counts))
    params = _draw_params(rng, count, image_size)
    chunks = [_compose(rng, labels, params, lo, min(lo + CHUNK, count), image_size)
              for lo in range(0, count, CHUNK)]
    return np.concatenate(chunks), labels


# ------------------------------------------------------------------ the domain ----

class ShapesDomain(SpicaDomain):
    name = "shapes"

    def __init__(self, count: int = 4000, image_size: int = 32, seed: int = 0, imbalance: float = 4.0,
                 **split_args):
        _check_args(count, image_size, seed, imbalance)
        self.count, self.image_size, self.seed, self.imbalance = int(count), int(image_size), int(seed), \
            float(imbalance)
        super().__init__(**split_args)

    def describe(self) -> dict:
        return {"count": self.count, "image_size": self.image_size, "seed": self.seed,
                "imbalance": self.imbalance, **super().describe()}

    def load_all(self) -> tuple[SampleSet, list[str]]:
        images, labels = render_shapes(self.count, self.image_size, self.seed, self.imbalance)
        n = len(images)
        return (SampleSet(labels=labels, ids=np.array([f"shapes-{i}" for i in range(n)]),
                          ages=np.arange(n, dtype=np.float64), channels=3, array=images),
                list(CLASS_NAMES))


def _check_args(count: object, image_size: object, seed: object, imbalance: object) -> None:
    k = len(CLASS_NAMES)
    for arg, value in (("count", count), ("image_size", image_size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DomainError(f"shapes: {arg} must be an integer, got {value!r}")
    if isinstance(imbalance, bool) or not isinstance(imbalance, (int, float)) or not 1 <= imbalance <= MAX_IMBALANCE:
        raise DomainError(f"shapes: imbalance must be a number from 1 (balanced) to {MAX_IMBALANCE:g}, "
                          f"got {imbalance!r}")
    if count < MIN_PER_CLASS * k:
        raise DomainError(f"shapes: count must be at least {MIN_PER_CLASS * k} ({MIN_PER_CLASS} per class "
                          f"for {k} classes), got {count}")
    if class_counts(count, k, float(imbalance)).min() < MIN_RAREST:
        raise DomainError(f"shapes: count {count} with imbalance {imbalance:g} leaves the rarest class fewer "
                          f"than {MIN_RAREST} images; raise count or lower imbalance")
    if not 16 <= image_size <= 256:
        raise DomainError(f"shapes: image_size must be from 16 to 256, got {image_size}")
    if seed < 0:
        raise DomainError(f"shapes: seed must be 0 or more, got {seed}")


# ------------------------------------------------------------- as files on disk ----

def write_shapes_files(root: str | Path, count: int = 7200, image_size: int = 32, seed: int = 0,
                       imbalance: float = 4.0, layout: str = "folder") -> Path:
    """The shapes task as a user's data would arrive: PNG files, for the image-folder and CSV tasks
    of the night benchmark and the tests. `folder`: root/<class>/<index>.png, written class by
    class as a copy would (so file times follow the class order); `csv`: root/images/<index>.png
    and root/labels.csv with id, label and age (the render index: the drift's true order).
    Returns the folder (`folder`) or the CSV (`csv`). Written once: a marker file records the args."""
    from PIL import Image

    root = Path(root)
    marker = root / ".shapes.json"
    args = {"count": count, "image_size": image_size, "seed": seed, "imbalance": imbalance, "layout": layout}
    target = root / "labels.csv" if layout == "csv" else root
    if marker.exists() and json.loads(marker.read_text()) == args:
        return target
    images, labels = render_shapes(count, image_size, seed, imbalance)
    rows = ["id,label,age"]
    for i in sorted(range(count), key=lambda k: (labels[k], k)):
        name = CLASS_NAMES[labels[i]]
        folder = root / ("images" if layout == "csv" else name)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i:05d}.png", compress_level=1)
        rows.append(f"{i:05d},{name},{i}")
    if layout == "csv":
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
    marker.write_text(json.dumps(args))
    return target
