"""Training data of the reference VLM: entity names + rendered images, and the augmentations.

Only the ``input`` (entity name) and ``image`` fields of the task files are read; the tasks' outputs (capitals,
currencies, latin names, young, colours, flavours) are never loaded.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = PACKAGE_ROOT / "data" / "images"
TASKS_DATA_DIR = PACKAGE_ROOT / "tasks" / "data"


@dataclass(frozen=True)
class Entity:
    key: str  # image key, e.g. "flags/fr.png"
    name: str  # the task item's input, e.g. "France"
    group: str  # "flags", "animals" or "foods"


def _group(key: str, task_name: str) -> str:
    if key.startswith("flags/"):
        return "flags"
    t = task_name.lower()
    if t.startswith("animal"):
        return "animals"
    if t.startswith("food"):
        return "foods"
    return "emoji"


def _items(data):
    """Items of a task file: a list, ``{"items": [...]}``, or ``{split: [...]}`` / ``{"items": {split: [...]}}``."""
    if isinstance(data, dict):
        if "items" in data:
            return _items(data["items"])
        out = []
        for v in data.values():
            if isinstance(v, list):
                out.extend(x for x in v if isinstance(x, dict))
        return out
    return [x for x in data if isinstance(x, dict)]


def load_entities(tasks_dir: Path | str = TASKS_DATA_DIR, images_dir: Path | str = IMAGES_DIR,
                  require_images: bool = True) -> tuple[list[Entity], list[str]]:
    """The union of (image key, entity name) over every task file that has images, sorted by key.

    Returns ``(entities, warnings)``. A key used with several names keeps the alphabetically first name (warned);
    keys whose image file is missing raise (``require_images``) or are skipped.
    """
    tasks_dir, images_dir = Path(tasks_dir), Path(images_dir)
    files = sorted(tasks_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no task files in {tasks_dir}")
    names: dict[str, set[str]] = {}
    groups: dict[str, str] = {}
    for path in files:
        for it in _items(json.loads(path.read_text())):
            key = it.get("image")
            if not key or "input" not in it:
                continue
            names.setdefault(key, set()).add(str(it["input"]).strip())
            groups.setdefault(key, _group(key, path.stem))
    warnings = []
    entities = []
    for key in sorted(names):
        cand = sorted(names[key])
        if len(cand) > 1:
            warnings.append(f"{key} is used for several names {cand}; training on {cand[0]!r}")
        if not (images_dir / key).is_file():
            if require_images:
                raise FileNotFoundError(f"{images_dir / key} missing: run `python -m tv_lens.reference.build_images`")
            warnings.append(f"{key} has no image; skipped")
            continue
        entities.append(Entity(key, cand[0], groups[key]))
    by_name: dict[str, list[str]] = {}
    for e in entities:
        by_name.setdefault(e.name, []).append(e.key)
    for name, keys in by_name.items():
        if len(keys) > 1:
            warnings.append(f"name {name!r} has several images {keys}")
    return entities, warnings


_CACHE: dict[str, Image.Image] = {}


def load_image(key: str, images_dir: Path | str = IMAGES_DIR) -> Image.Image:
    path = Path(images_dir) / key
    cache_key = str(path)
    if cache_key not in _CACHE:
        with Image.open(path) as im:
            _CACHE[cache_key] = im.convert("RGB")
    return _CACHE[cache_key]


def _foreground_mask(im: Image.Image, is_flag: bool) -> Image.Image:
    """L-mode mask of the entity: the whole rectangle for flags, everything but the white region that touches the
    border for emoji (so white parts inside a glyph stay)."""
    if is_flag:
        return Image.new("L", im.size, 255)
    marker = (255, 0, 255)
    work = im.copy()
    w, h = work.size
    for xy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)):
        if work.getpixel(xy) != marker:
            ImageDraw.floodfill(work, xy, marker, thresh=24)
    arr = np.asarray(work)
    bg = np.all(arr == np.array(marker, dtype=arr.dtype), axis=-1)
    return Image.fromarray(np.where(bg, 0, 255).astype(np.uint8), "L")


_MASKS: dict[str, Image.Image] = {}


def augment(image: Image.Image, key: str, rng: np.random.Generator, p_plain: float = 0.15) -> Image.Image:
    """One random view of an entity image, in the image's own frame (the processor then resizes it to 64x64).

    - with probability ``p_plain``: the image unchanged (the view the tasks use);
    - background colour: white (65%) or a uniformly random RGB colour (35%);
    - scale 0.7-1.0 of the frame (flags: of the flag itself, its white margin cut off) with +-8% aspect jitter,
      random position; up to 8% of the entity may leave the frame (a crop);
    - colour jitter: brightness, contrast, saturation 0.8-1.2 (no hue shift: it changes flags' identity).
    """
    if rng.random() < p_plain:
        return image
    is_flag = key.startswith("flags/")
    w, h = image.size
    if key not in _MASKS:
        if is_flag:  # the package's flags sit in a transparent (now white) margin: cut it off
            diff = np.abs(np.asarray(image, dtype=np.int16) - 255).max(axis=-1)
            ys, xs = np.nonzero(diff > 12)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, w, h)
            fg_image = image.crop(box)
        else:
            fg_image = image
        _MASKS[key] = (fg_image, _foreground_mask(fg_image, is_flag))
    image, mask = _MASKS[key]
    bg = (255, 255, 255) if rng.random() < 0.65 else tuple(int(c) for c in rng.integers(0, 256, size=3))
    canvas = Image.new("RGB", (w, h), bg)
    s = rng.uniform(0.7, 1.0)
    aspect = rng.uniform(0.92, 1.08)
    nw, nh = max(4, round(image.width * s * aspect)), max(4, round(image.height * s / aspect))
    fg = image.resize((nw, nh), Image.BICUBIC)
    m = mask.resize((nw, nh), Image.BILINEAR)
    slack_x, slack_y = int(0.08 * nw), int(0.08 * nh)
    x = int(rng.integers(-slack_x, max(-slack_x, w - nw + slack_x) + 1))
    y = int(rng.integers(-slack_y, max(-slack_y, h - nh + slack_y) + 1))
    canvas.paste(fg, (x, y), m)
    canvas = ImageEnhance.Brightness(canvas).enhance(rng.uniform(0.8, 1.2))
    canvas = ImageEnhance.Contrast(canvas).enhance(rng.uniform(0.8, 1.2))
    canvas = ImageEnhance.Color(canvas).enhance(rng.uniform(0.8, 1.2))
    return canvas


def view(entity: Entity, seed: int, view_index: int, images_dir: Path | str = IMAGES_DIR,
         p_plain: float = 0.15) -> Image.Image:
    """The deterministic augmented view ``view_index`` of an entity under ``seed`` (independent of other entities)."""
    rng = np.random.default_rng([seed, zlib.crc32(entity.key.encode()), view_index])
    return augment(load_image(entity.key, images_dir), entity.key, rng, p_plain=p_plain)
