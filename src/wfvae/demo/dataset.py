"""A small built-in dataset of realistic clips: camera moves over real photographs, plus moving objects.

How to use::

    from wfvae.demo.dataset import make_demo_dataset

    info = make_demo_dataset("demo/data")                 # ~2 s on 2 CPU cores
    info["train"][:2]   # ['train/camera/pan/000_astronaut.mp4', 'train/camera/zoom/001_chelsea.mp4']
    # demo/data/train and demo/data/val are ready for VideoFolderDataset / wfvae train --video_path

Where the pictures come from: the photographs that ship inside the scikit-image wheel
(``skimage.data.data_dir``: astronaut, chelsea, rocket, camera, ..., every picture the wheel
bundles but one stereo partner of a held-out photo). They are read straight from that folder, so
nothing is ever downloaded; scikit-image's other images are fetched on first use and are
deliberately not in :data:`PHOTOS`. Three photos are held out for ``val`` so validation measures
clips of pictures the model never saw. Each clip draws its own field of view (0.4x-1.15x the
motion's nominal view size), so the same photo appears as close-ups and wide shots.

Each clip is one of five motions, chosen round robin (``val`` has the same mix):

* ``camera/pan``: the view slides across the photo at constant velocity (0.5-1.5 px/frame).
* ``camera/zoom``: the view scales geometrically (x1.3-1.7, in or out) around a drifting centre.
* ``camera/rotate``: the view turns 8-25 degrees around a fixed centre.
* ``camera/handheld``: a slow pan with sinusoidal shake, roll wobble and zoom "breathing".
* ``objects``: a static or slowly panning camera while 2-3 sprites (discs, boxes, triangles and
  photo cut-outs, with soft shadows) cross the frame, some of them spinning.

Motion is sub-pixel everywhere: every frame is an affine (bilinear) resampling of the photo, which
is first shrunk with a Lanczos filter to about one photo pixel per output pixel (no aliasing), and
sprite edges get analytic one-pixel coverage ramps (anti-aliased). Every clip's random numbers come from ``(seed, split, index)``, so clip ``val/3`` is the same whatever
``n_train`` is, and the same seed gives the same pixels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from wfvae.data.video_write import write_video

logger = logging.getLogger(__name__)

__all__ = ["MOTIONS", "PHOTOS", "VAL_PHOTOS", "load_photo", "make_demo_clip", "make_demo_dataset"]

#: short name -> file in ``skimage.data.data_dir`` (images bundled in the scikit-image wheel).
PHOTOS: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "hubble": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "camera": "camera.png",
    "moon": "moon.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "brick": "brick.png",
    "cell": "cell.png",
    "page": "page.png",
    "coffee": "coffee.png",
    "motorcycle": "motorcycle_left.png",
    "coins": "coins.png",
    "clock": "clock_motion.png",
    "retina": "retina.jpg",
    "microaneurysms": "microaneurysms.png",
    "color": "color.png",
    "logo": "logo.png",
    "phantom": "phantom.png",
    "chessboard": "chessboard_RGB.png",
    "text": "text.png",
    "horse": "horse.png",
}
# Not used: motorcycle_right.png is the stereo partner of the held-out motorcycle_left.png (it would
# leak the validation scene into training); lfw_subset.npy holds 25x25 thumbnails.
#: photos used only by the ``val`` split.
VAL_PHOTOS: tuple[str, ...] = ("coffee", "motorcycle", "coins")
#: motion kinds, in the round-robin order clips use them.
MOTIONS: tuple[str, ...] = ("pan", "zoom", "rotate", "handheld", "objects")

_SPLIT_IDS = {"train": 0, "val": 1}
_FPS = 24


def _data_dir() -> Path:
    try:
        import skimage.data  # lazy: optional extra [demo]
    except ImportError as e:
        raise ImportError("the demo dataset uses photos bundled with scikit-image: pip install wfvae[demo]") from e
    return Path(skimage.data.data_dir)


def load_photo(name: str) -> np.ndarray:
    """One bundled scikit-image photo as float32 RGB ``(H, W, 3)`` in [0, 1] (grey photos are replicated).

    Raises:
        KeyError: ``name`` is not in :data:`PHOTOS`.
        FileNotFoundError: the scikit-image install lacks the file (a stripped wheel).
    """
    if name not in PHOTOS:
        raise KeyError(f"unknown demo photo {name!r}; choose one of {sorted(PHOTOS)}")
    path = _data_dir() / PHOTOS[name]
    if not path.is_file():
        raise FileNotFoundError(f"scikit-image data file {path} is missing; reinstall scikit-image")
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return rgb


@dataclasses.dataclass
class _ClipSpec:
    """What one clip shows (also written to the dataset manifest)."""

    path: str
    split: str
    index: int
    photo: str
    motion: str
    num_sprites: int = 0


# ------------------------------------------------------------------------------------------------
# Camera paths. Coordinates are in pixels of the (pre-scaled) photo, continuous: the photo covers
# [0, W] x [0, H]. A view is a square of half-width `half` centred at (cx, cy), rotated by `angle`.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _CameraPath:
    cx: np.ndarray  # (T,)
    cy: np.ndarray  # (T,)
    half: np.ndarray  # (T,) half-width of the view
    angle: np.ndarray  # (T,) radians, counter-clockwise


def _keep_inside(path: _CameraPath, width: int, height: int) -> _CameraPath:
    """Clamp centres so the rotated view never leaves the photo (no border smearing)."""
    reach = path.half * (np.abs(np.cos(path.angle)) + np.abs(np.sin(path.angle)))  # (T,) half-extent per axis
    cx = np.clip(path.cx, reach, np.maximum(reach, width - reach))
    cy = np.clip(path.cy, reach, np.maximum(reach, height - reach))
    return dataclasses.replace(path, cx=cx, cy=cy)


def _start_for(rng: np.random.Generator, lo: float, hi: float, delta: float) -> float:
    """A start coordinate in [lo, hi] such that start + delta stays in [lo, hi] too (if it can)."""
    a, b = lo - min(0.0, delta), hi - max(0.0, delta)
    return float(rng.uniform(a, b)) if b > a else (lo + hi - delta) / 2


def _camera_path(rng: np.random.Generator, motion: str, t: np.ndarray, width: int, height: int, size: int) -> _CameraPath:
    """Sample a smooth camera path of one motion kind; `t` runs over frame indices 0..T-1."""
    # A random field of view per clip (log-uniform, 0.4x-1.15x the motions' nominal sizes): close-ups
    # and wide views of the same photo.
    short = min(width, height) * math.exp(rng.uniform(math.log(0.4), math.log(1.15)))
    n = len(t)
    s = t / max(n - 1, 1)  # 0 -> 1 over the clip
    zeros = np.zeros(n)
    if motion == "zoom":
        half_small = rng.uniform(0.15, 0.22) * short
        factor = rng.uniform(1.3, 1.7)
        half = half_small * factor ** (s if rng.random() < 0.5 else 1 - s)  # geometric: constant zoom speed
        reach = half.max()
        cx0, cy0 = rng.uniform(reach, width - reach), rng.uniform(reach, height - reach)
        drift = rng.normal(0, 0.05 * short, size=2)
        path = _CameraPath(cx0 + drift[0] * s, cy0 + drift[1] * s, half, zeros)
    elif motion == "rotate":
        half = np.full(n, rng.uniform(0.2, 0.3) * short)
        turn = math.radians(rng.uniform(8, 25)) * rng.choice([-1, 1])
        angle = math.radians(rng.uniform(-10, 10)) + turn * s
        reach = half[0] * math.sqrt(2)
        cx0, cy0 = rng.uniform(reach, width - reach), rng.uniform(reach, height - reach)
        path = _CameraPath(np.full(n, cx0), np.full(n, cy0), half, angle)
    elif motion in ("pan", "handheld", "objects"):
        half = np.full(n, rng.uniform(0.22, 0.32) * short)
        px_per_out = 2 * half[0] / size  # photo pixels per output pixel
        speed = {"pan": rng.uniform(0.5, 1.5), "handheld": rng.uniform(0.1, 0.5), "objects": rng.uniform(0.0, 0.3)}[motion]
        direction = rng.uniform(0, 2 * np.pi)
        dx, dy = np.array([np.cos(direction), np.sin(direction)]) * speed * px_per_out * (n - 1)
        reach = half[0] * (1.1 if motion == "handheld" else 1.0)
        cx0 = _start_for(rng, reach, width - reach, dx)
        cy0 = _start_for(rng, reach, height - reach, dy)
        cx, cy, angle = cx0 + dx * s, cy0 + dy * s, zeros
        if motion == "handheld":
            # Shake: two sinusoids per axis (0.05-0.3 cycles/frame), amplitude ~1 output pixel.
            for arr in (cx, cy):
                for _ in range(2):
                    freq, phase = rng.uniform(0.05, 0.3), rng.uniform(0, 2 * np.pi)
                    arr += rng.uniform(0.3, 1.0) * px_per_out * np.sin(2 * np.pi * freq * t + phase)
            angle = math.radians(rng.uniform(0.5, 1.5)) * np.sin(2 * np.pi * rng.uniform(0.03, 0.1) * t + rng.uniform(0, 6.3))
            half = half * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(0.02, 0.06) * t + rng.uniform(0, 6.3)))
        path = _CameraPath(cx, cy, half, angle)
    else:
        raise ValueError(f"unknown motion {motion!r}; choose one of {MOTIONS}")
    return _keep_inside(path, width, height)


def _prescale(photo: np.ndarray, half: float, size: int) -> tuple[np.ndarray, float]:
    """Shrink the photo (Lanczos, i.e. properly filtered) so one view spans about `size` pixels.

    Bilinear resampling then works near 1:1 and does not alias (zoom clips vary around 1:1).

    Returns the scaled photo and the scale factor applied (<= 1: photos are never enlarged).
    """
    scale = min(1.0, size / (2 * half))
    if scale >= 0.999:
        return photo, 1.0
    h, w = photo.shape[:2]
    new_w, new_h = max(2, round(w * scale)), max(2, round(h * scale))
    img = Image.fromarray((photo * 255).round().astype(np.uint8)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0, new_w / w


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``image`` (H, W, C) at continuous coordinates (pixel i covers [i, i+1)); borders are clamped.

    Returns float32 of shape ``x.shape + (C,)``.
    """
    h, w = image.shape[:2]
    x = np.clip(x - 0.5, 0, w - 1).astype(np.float32)  # to pixel-centre coordinates
    y = np.clip(y - 0.5, 0, h - 1).astype(np.float32)
    x0 = np.minimum(x.astype(np.int32), max(w - 2, 0))
    y0 = np.minimum(y.astype(np.int32), max(h - 2, 0))
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    flat = image.reshape(h * w, -1)
    i = y0 * w + x0  # one flat index, then the 4 neighbours by offsets: a single gather each
    right, down = min(1, w - 1), w if h > 1 else 0
    top_left, top_right = flat[i], flat[i + right]
    bottom_left, bottom_right = flat[i + down], flat[i + down + right]
    top = top_left + (top_right - top_left) * fx
    bottom = bottom_left + (bottom_right - bottom_left) * fx
    return top + (bottom - top) * fy


def _render_camera(photo: np.ndarray, path: _CameraPath, out: int) -> np.ndarray:
    """Resample the photo along the camera path: float32 ``(T, out, out, 3)`` in [0, 1]."""
    u = (np.arange(out, dtype=np.float64) + 0.5) / out * 2 - 1  # pixel centres in [-1, 1]
    v, u = np.meshgrid(u, u, indexing="ij")  # (out, out) each: v down, u right
    cx, cy, half, angle = (np.asarray(a, dtype=np.float64)[:, None, None] for a in
                           (path.cx, path.cy, path.half, path.angle))  # (T, 1, 1) each
    cos, sin = np.cos(angle), np.sin(angle)
    x = cx + half * (cos * u - sin * v)  # (T, out, out) photo pixels
    y = cy + half * (sin * u + cos * v)
    return _bilinear(photo, x, y)


# ------------------------------------------------------------------------------------------------
# Sprites: signed distance fields, composited with soft shadows.
# ------------------------------------------------------------------------------------------------


def _sprite_sdf(kind: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape centred at the origin, in its own frame."""
    if kind in ("disc", "photo"):
        return np.sqrt(x**2 + y**2) - radius
    if kind == "box":
        qx, qy = np.abs(x) - radius * 0.85, np.abs(y) - radius * 0.6
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0)
    if kind == "triangle":
        # Equilateral triangle: the max of three half-plane distances (exact inside, close enough outside).
        angles = [math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        return np.max([x * math.cos(a) + y * math.sin(a) for a in angles], axis=0) - radius * 0.55
    raise ValueError(f"unknown sprite kind {kind!r}")


def _add_sprites(rng: np.random.Generator, frames: np.ndarray, n_sprites: int, photos: list[np.ndarray]) -> None:
    """Composite ``n_sprites`` moving objects over ``frames`` (T, S, S, 3) float32, in place."""
    n, size = frames.shape[0], frames.shape[1]
    t = np.arange(n, dtype=np.float32)[:, None, None]  # (T, 1, 1)
    coords = np.arange(size, dtype=np.float32) + 0.5
    gy, gx = np.meshgrid(coords, coords, indexing="ij")  # (S, S)
    for _ in range(n_sprites):
        kind = str(rng.choice(["disc", "box", "triangle", "photo"]))
        radius = rng.uniform(0.1, 0.2) * size
        speed = rng.uniform(1.0, 3.5)  # pixels per frame
        heading = rng.uniform(0, 2 * np.pi)
        mid = rng.uniform(0.25, 0.75, size=2) * size  # centre at the middle frame: visible mid-clip
        cx = mid[0] + math.cos(heading) * speed * (t - (n - 1) / 2)  # (T, 1, 1)
        cy = mid[1] + math.sin(heading) * speed * (t - (n - 1) / 2)
        spin = np.float32(math.radians(rng.uniform(-8, 8))) * t + np.float32(rng.uniform(0, 2 * np.pi))
        dx, dy = gx - cx, gy - cy  # (T, S, S)
        cos, sin = np.cos(spin), np.sin(spin)
        lx, ly = cos * dx + sin * dy, -sin * dx + cos * dy  # sprite frame

        # Soft shadow: the same shape, offset down-right and blurred by a wide coverage ramp.
        shadow_sdf = _sprite_sdf(kind, lx - 0.12 * radius, ly - 0.12 * radius, radius)
        shadow = np.clip(0.5 - shadow_sdf / (0.25 * radius), 0, 1) * 0.35  # (T, S, S)
        frames *= (1 - shadow)[..., None]

        alpha = np.clip(0.5 - _sprite_sdf(kind, lx, ly, radius), 0, 1)[..., None]  # 1-pixel ramp: anti-aliased
        if kind == "photo":
            # A disc cut from another photo; texture coordinates move and spin with the sprite.
            photo = photos[int(rng.integers(len(photos)))]
            ph, pw = photo.shape[:2]
            cut = rng.uniform(0.15, 0.35) * min(ph, pw)
            ox, oy = rng.uniform(cut, pw - cut), rng.uniform(cut, ph - cut)
            color = _bilinear(photo, ox + lx / radius * cut, oy + ly / radius * cut)
        else:
            # Flat colour with a diagonal light gradient, so the shape looks lit rather than pasted.
            base = rng.uniform(0.15, 0.95, size=3).astype(np.float32)
            light = 1.15 - 0.3 * np.clip((lx + ly) / (2 * radius), -1, 1)  # (T, S, S)
            color = np.clip(base * light[..., None], 0, 1)
        frames *= 1 - alpha
        frames += alpha * color


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------


def make_demo_clip(
    photo: np.ndarray,
    motion: str,
    num_frames: int = 17,
    size: int = 64,
    seed: int | np.random.Generator = 0,
    sprite_photos: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """Render one clip: a camera ``motion`` over ``photo`` (plus sprites for ``"objects"``).

    Args:
        photo: float32 RGB ``(H, W, 3)`` in [0, 1], e.g. from :func:`load_photo`.
        motion: one of :data:`MOTIONS`.
        num_frames: frames T (>= 2).
        size: output height = width in pixels (>= 8).
        seed: an int seed or a ``numpy`` Generator.
        sprite_photos: photos to cut disc sprites from (defaults to ``[photo]``).

    Returns:
        ``(frames, num_sprites)``: uint8 ``(T, size, size, 3)`` RGB, and how many sprites were drawn.
    """
    if num_frames < 2 or size < 8:
        raise ValueError(f"need num_frames >= 2 and size >= 8; got num_frames={num_frames}, size={size}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    t = np.arange(num_frames, dtype=np.float64)
    h, w = photo.shape[:2]
    path = _camera_path(rng, motion, t, w, h, size)
    scaled, scale = _prescale(photo, float(path.half.mean()), size)
    path = dataclasses.replace(path, cx=path.cx * scale, cy=path.cy * scale, half=path.half * scale)
    frames = _render_camera(scaled, path, size)  # (T, S, S, 3)
    num_sprites = 0
    if motion == "objects":
        num_sprites = int(rng.integers(2, 4))
        _add_sprites(rng, frames, num_sprites, sprite_photos or [photo])
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8), num_sprites


def _clip_folder(motion: str) -> str:
    return "objects" if motion == "objects" else f"camera/{motion}"


def make_demo_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 24,
    n_val: int = 6,
    num_frames: int = 17,
    size: int = 64,
    seed: int = 0,
    train_size: int | None = None,
) -> dict:
    """Write the demo dataset: ``out_dir/train`` and ``out_dir/val``, H.264 mp4 clips in nested folders.

    Layout (like the spec's ``sub_dataset/sub_sub_dataset`` nesting)::

        out_dir/train/camera/{pan,zoom,rotate,handheld}/NNN_<photo>.mp4
        out_dir/train/objects/NNN_<photo>.mp4
        out_dir/val/...                        (same layout, held-out photos)
        out_dir/demo_dataset.json              (the returned dict)

    Args:
        out_dir: dataset root (created; existing clips of the same names are overwritten).
        n_train: clips in ``train`` (>= 0).
        n_val: clips in ``val`` (>= 0).
        num_frames: frames per clip (>= 2; use 1 + 4k, e.g. 17, for the VAEs).
        size: frame height = width in pixels (>= 8; even keeps H.264 in yuv420p).
        seed: the same seed writes the same pixels.
        train_size: frame side of the ``train`` clips (default: ``size``). A smaller side renders the same
            views (each clip's field of view is drawn in photo pixels) with fewer pixels, so a trainer can
            read its clips at that size instead of decoding and resizing larger ones.

    Returns:
        ``{"root", "train": [relative paths], "val": [...], "clips": [{"path", "split", "index",
        "photo", "motion", "num_sprites"}], "num_frames", "size", "train_size", "fps", "seed", "photos": {split: [...]}}``;
        paths are relative to ``out_dir`` with ``/`` separators.

    Raises:
        ImportError: scikit-image (the ``demo`` extra) is not installed.
        ValueError: bad counts or sizes.
    """
    if n_train < 0 or n_val < 0:
        raise ValueError(f"n_train and n_val must be >= 0; got {n_train}, {n_val}")
    train_size = size if train_size is None else train_size
    if num_frames < 2 or min(size, train_size) < 8:
        raise ValueError(f"need num_frames >= 2 and size, train_size >= 8; got num_frames={num_frames}, "
                         f"size={size}, train_size={train_size}")
    root = Path(out_dir)
    split_photos = {
        "train": [p for p in PHOTOS if p not in VAL_PHOTOS],
        "val": list(VAL_PHOTOS),
    }
    cache: dict[str, np.ndarray] = {}

    def photo(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = load_photo(name)
        return cache[name]

    clips: list[_ClipSpec] = []
    for split, count in (("train", n_train), ("val", n_val)):
        names = split_photos[split]
        side = train_size if split == "train" else size
        for i in range(count):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
            name = names[i % len(names)]  # photo and motion cycle at different periods: pairs vary
            motion = MOTIONS[i % len(MOTIONS)]
            others = [photo(p) for p in names if p != name][:3] or [photo(name)]
            frames, num_sprites = make_demo_clip(photo(name), motion, num_frames, side, rng, sprite_photos=others)
            rel = f"{split}/{_clip_folder(motion)}/{i:03d}_{name}.mp4"
            write_video(root / rel, frames, fps=_FPS)
            clips.append(_ClipSpec(rel, split, i, name, motion, num_sprites))
    info = {
        "root": str(root),
        "train": [c.path for c in clips if c.split == "train"],
        "val": [c.path for c in clips if c.split == "val"],
        "clips": [dataclasses.asdict(c) for c in clips],
        "num_frames": num_frames,
        "size": size,
        "train_size": train_size,
        "fps": _FPS,
        "seed": seed,
        "photos": split_photos,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo_dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("demo dataset: %d train clips at %dx%d + %d val clips at %dx%d, %d frames, in %s",
                n_train, train_size, train_size, n_val, size, size, num_frames, root)
    return info
