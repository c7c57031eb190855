"""Where each image token sits in the picture: (view, row, col) on a patch grid and a pixel box of the image.

Every family lays an image out differently; its adapter names the layout (``Adapter.image_layout``, a key of
:data:`LAYOUTS`) and this module computes it, for one image, from the processor's own settings and from what the
processor wrote for that image (``image_sizes``, ``image_grid_thw``, the tile tags, the patch rows):

- ``"clip"`` (LLaVA-1.5, the reference VLM): one square grid; the pixels it covers follow the image processor's
  resize (shortest edge or stretch) and centre crop; with the ``"full"`` strategy a leading CLS token has no place.
- ``"anyres"`` (LLaVA-NeXT, LLaVA-OneVision): the base view (whole image) then the high-resolution grid over the
  best-fitting canvas, unpadded, one image-newline token closing each row (OneVision: bilinearly downsampled past
  ``anyres_max_N``; a prompt with several images: the base view alone, padded to a square, one newline at its end).
- ``"tiles"`` (Idefics3, SmolVLM): ``<row_i_col_j>`` tiles of the stretched image, then the global view; each tile's
  tokens are its pixel-shuffled grid.
- ``"patch_rows"`` (Fuyu): rows of patches of the image (shrunk to fit, never enlarged), each row followed by a
  ``|NEWLINE|`` token, which is not part of ``image[j]`` but is listed here.
- ``"merged"`` (Qwen2-VL, Qwen2.5-VL): ``image_grid_thw`` patches merged ``spatial_merge_size``² into one token.
- ``"pooled"`` (Gemma 3): the vision grid average-pooled to ``mm_tokens_per_image`` tokens of the stretched image.
- ``"perceiver"`` (Idefics2): raises :class:`~tv_lens.errors.ImageLayoutError`: each latent reads every patch.

Every layout checks its token count against the tokens the processor wrote, so a processor that lays images out
differently from this arithmetic raises instead of mapping tokens to the wrong place.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from .adapters.base import contiguous_runs
from .errors import ImageLayoutError, InputError

Box = tuple[float, float, float, float]
COLUMNS = ["token", "offset", "view", "view_index", "row", "col", "kind", "x0", "y0", "x1", "y1"]


@dataclass(frozen=True)
class View:
    """One grid of image tokens, in token order.

    Attributes:
        name: ``"image"``, ``"base"``, ``"high-res"``, ``"tile 1,2"``, ``"global"``...
        rows, cols: the grid's shape (tokens, not pixels).
        region: ``(x0, y0, x1, y1)``: the part of the original image (in its pixels) the grid covers; it may reach
            past the image where the processor padded it (boxes are clipped to the image).
        newline: ``"row"``: a newline token follows each row; ``"end"``: one follows the last row; ``None``.
        lead: tokens before the grid that have no place (a CLS token).
    """

    name: str
    rows: int
    cols: int
    region: Box
    newline: str | None = None
    lead: int = 0

    @property
    def n_tokens(self) -> int:
        newlines = {"row": self.rows, "end": 1}.get(self.newline, 0)
        return self.lead + self.rows * self.cols + newlines


@dataclass
class ImageGeometry:
    """Where the tokens of one image of one prompt sit.

    Attributes:
        image_index: ``j`` of ``image[j]`` in the prompt.
        image_size: ``(width, height)`` of the image as given.
        views: the grids, in token order.
        frame: one row per token of the image (:data:`COLUMNS`): ``token`` (index in the sequence), ``offset``
            (index in the image's tokens), ``view`` / ``view_index``, ``row`` / ``col`` (on that view's grid; -1 for
            tokens without a place), ``kind`` (``"patch"``, ``"newline"``, ``"cls"``) and the pixel box
            ``x0 y0 x1 y1`` in the original image (NaN without a place).
        family: the model family.
        image: the image itself (PIL), for plots; ``None`` when only its size is known.
    """

    image_index: int
    image_size: tuple[int, int]
    views: tuple[View, ...]
    frame: pd.DataFrame
    family: str
    image: Any = field(default=None, repr=False)

    @property
    def patch_tokens(self) -> Int[Tensor, " n_patches"]:
        """Sequence indices of the tokens with a place in the picture (``kind == "patch"``), in token order."""
        return torch.tensor(self.patches["token"].tolist(), dtype=torch.long)

    @property
    def patches(self) -> pd.DataFrame:
        """The rows of :attr:`frame` with a place in the picture."""
        return self.frame[self.frame["kind"] == "patch"].reset_index(drop=True)

    def view(self, name: str) -> pd.DataFrame:
        """The patch rows of one view (``"image"``, ``"base"``, ``"tile 1,2"``, ``"global"``...)."""
        names = [v.name for v in self.views]
        if name not in names:
            raise InputError(f"No view {name!r} in this image; its views are {names}.")
        return self.patches[self.patches["view"] == name].reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def __repr__(self) -> str:
        grids = ", ".join(f"{v.name} {v.rows}×{v.cols}" + (f"+nl/{v.newline}" if v.newline else "")
                          for v in self.views)
        w, h = self.image_size
        return (f"ImageGeometry({self.family}, image[{self.image_index}] {w}×{h}px, {len(self.frame)} tokens "
                f"({len(self.patches)} patches) at {int(self.frame['token'].min())}..{int(self.frame['token'].max())}"
                f": {grids})")


# ------------------------------------------------------------------------------------------------ building frames
def _frame(views: Sequence[View], tokens: Sequence[int], image_size: tuple[int, int]) -> pd.DataFrame:
    """Enumerate the views' tokens in order against the actual token indices (counts must agree)."""
    width, height = image_size
    rows: list[list] = []

    def add(kind: str, vi: int, view: View, row: int = -1, col: int = -1, box: Box | None = None) -> None:
        x0, y0, x1, y1 = box if box is not None else (math.nan,) * 4
        rows.append([vi, view.name, row, col, kind, x0, y0, x1, y1])

    for vi, view in enumerate(views):
        for _ in range(view.lead):
            add("cls", vi, view)
        rx0, ry0, rx1, ry1 = view.region
        cw, ch = (rx1 - rx0) / view.cols, (ry1 - ry0) / view.rows
        for r in range(view.rows):
            for c in range(view.cols):
                box = (max(0.0, rx0 + c * cw), max(0.0, ry0 + r * ch),
                       min(float(width), rx0 + (c + 1) * cw), min(float(height), ry0 + (r + 1) * ch))
                add("patch", vi, view, r, c, box)
            if view.newline == "row":
                add("newline", vi, view, r)
        if view.newline == "end":
            add("newline", vi, view, view.rows - 1)
    if len(rows) != len(tokens):
        raise ImageLayoutError(
            f"The layout gives {len(rows)} tokens for this image ({', '.join(f'{v.name} {v.rows}×{v.cols}' for v in views)}"
            f"), the processor wrote {len(tokens)}: this processor lays images out differently from tv_lens's "
            "arithmetic for the family (a transformers change or an unusual setting); please report it.")
    frame = pd.DataFrame(rows, columns=["view_index", "view", "row", "col", "kind", "x0", "y0", "x1", "y1"])
    frame.insert(0, "offset", range(len(tokens)))
    frame.insert(0, "token", [int(t) for t in tokens])
    return frame[COLUMNS]


@dataclass(frozen=True)
class _Image:
    """What a layout needs to know about one image of one prompt."""

    model: Any
    inputs: dict
    row: int
    index: int          # j within the row
    flat_index: int     # index over every image of the batch (image_sizes / image_grid_thw rows)
    n_in_row: int
    span: Tensor        # the adapter's image[j] token indices
    size: tuple[int, int]   # (width, height)

    @property
    def ids(self) -> Tensor:
        return self.inputs["input_ids"][self.row]

    @property
    def config(self):
        return self.model.hf_model.config

    @property
    def image_processor(self):
        return getattr(self.model.processor, "image_processor", self.model.processor)


def _get(obj, name: str, default=None):
    value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return default if value is None else value


def _hw(size) -> tuple[int | None, int | None, int | None]:
    """``(height, width, shortest_edge)`` of a processor size (dict or SizeDict)."""
    return _get(size, "height"), _get(size, "width"), _get(size, "shortest_edge")


# ------------------------------------------------------------------------------------------------ layouts
def _resize_crop_region(image_processor, width: int, height: int) -> Box:
    """The part of the image a CLIP-style processor keeps: resize (shortest edge, or stretch to height×width), then
    an optional centre crop."""
    h, w, short = _hw(image_processor.size)
    if short is not None:
        scale = short / min(width, height)
        sx = sy = scale
    else:
        sx, sy = w / width, h / height
    region = (0.0, 0.0, float(width), float(height))
    if getattr(image_processor, "do_center_crop", False) and image_processor.crop_size:
        ch, cw, _ = _hw(image_processor.crop_size)
        rw, rh = width * sx, height * sy
        left, top = (rw - cw) / 2, (rh - ch) / 2
        region = (left / sx, top / sy, (left + cw) / sx, (top + ch) / sy)
    return region


def clip_layout(img: _Image) -> list[View]:
    vision = img.config.vision_config
    side = vision.image_size // vision.patch_size
    strategy = getattr(img.config, "vision_feature_select_strategy", "default")
    lead = int(img.span.numel()) - side * side if strategy == "full" else 0
    region = _resize_crop_region(img.image_processor, *img.size)
    return [View("image", side, side, region, lead=lead)]


def _best_resolution(processor, height: int, width: int) -> tuple[int, int]:
    from transformers.image_processing_utils import select_best_resolution

    return tuple(select_best_resolution([height, width], processor.image_processor.image_grid_pinpoints))


def anyres_layout(img: _Image) -> list[View]:
    processor, config = img.model.processor, img.config
    width, height = img.size
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    whole = (0.0, 0.0, float(width), float(height))
    onevision = hasattr(processor, "vision_aspect_ratio")
    if onevision and img.n_in_row > 1:   # several images: the base view of the image padded to a square
        big = max(width, height)
        square = ((width - big) / 2, (height - big) / 2, (width + big) / 2, (height + big) / 2)
        return [View("base", side, side, square, newline="end")]
    best_h, best_w = _best_resolution(processor, height, width)
    grid_h, grid_w = side * (best_h // vision.image_size), side * (best_w // vision.image_size)
    # the image is resized to fit the best canvas and pasted in its middle; the feature grid is then unpadded
    if width / height > grid_w / grid_h:
        new_h = int(round(height * (grid_w / width), 7))
        pad = (grid_h - new_h) // 2
        kept = (0, pad, grid_w, grid_h - pad)
    else:
        new_w = int(round(width * (grid_h / height), 7))
        pad = (grid_w - new_w) // 2
        kept = (pad, 0, grid_w - pad, grid_h)
    rows, cols = kept[3] - kept[1], kept[2] - kept[0]
    unpadded, newlines = processor._get_unpadded_features(height, width, side, side, best_h // vision.image_size,
                                                          best_w // vision.image_size)
    if newlines != rows or unpadded != rows * cols:   # OneVision's anyres_max_N downsampling
        rows, cols = newlines, unpadded // newlines
    scale = min(best_w / width, best_h / height)   # the processor's aspect-keeping resize into the canvas
    paste_x, paste_y = (best_w - width * scale) / 2, (best_h - height * scale) / 2
    cell_w, cell_h = best_w / grid_w, best_h / grid_h
    region = ((kept[0] * cell_w - paste_x) / scale, (kept[1] * cell_h - paste_y) / scale,
              (kept[2] * cell_w - paste_x) / scale, (kept[3] * cell_h - paste_y) / scale)
    return [View("base", side, side, whole), View("high-res", rows, cols, region, newline="row")]


_TILE_TAG = re.compile(r"<row_(\d+)_col_(\d+)>")


def tiles_layout(img: _Image) -> list[View]:
    width, height = img.size
    ids = img.ids
    runs = contiguous_runs(_in_span(ids, img.span))
    # the token before each run is its tag: <row_i_col_j> for a tile, <global-img> for the whole image
    tags = [_TILE_TAG.fullmatch(t) for t in img.model.tokenizer.convert_ids_to_tokens(
        [int(ids[int(run[0]) - 1]) for run in runs])]
    n_rows = max([int(m[1]) for m in tags if m] or [1])
    n_cols = max([int(m[2]) for m in tags if m] or [1])
    views = []
    for run, tag in zip(runs, tags):
        side = math.isqrt(int(run.numel()))
        if tag is None:
            views.append(View("global", side, side, (0.0, 0.0, float(width), float(height))))
            continue
        i, j = int(tag[1]) - 1, int(tag[2]) - 1
        tw, th = width / n_cols, height / n_rows
        views.append(View(f"tile {i + 1},{j + 1}", side, side, (j * tw, i * th, (j + 1) * tw, (i + 1) * th)))
    return views


def _in_span(ids: Tensor, span: Tensor) -> Tensor:
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[span.to(ids.device)] = True
    return mask


def patch_rows_layout(img: _Image) -> list[View]:
    width, height = img.size
    image_processor = img.image_processor
    runs = contiguous_runs(_in_span(img.ids, img.span))
    target_h, target_w, _ = _hw(image_processor.size)
    patch_h, patch_w, _ = _hw(image_processor.patch_size)
    if width <= target_w and height <= target_h:
        sx = sy = 1.0
    else:   # shrunk to fit the target, aspect kept, never enlarged
        factor = min(target_h / height, target_w / width)
        sx, sy = int(width * factor) / width, int(height * factor) / height
    rows, cols = len(runs), int(runs[0].numel())
    region = (0.0, 0.0, cols * patch_w / sx, rows * patch_h / sy)
    return [View("image", rows, cols, region, newline="row")]


def patch_rows_tokens(img: _Image) -> list[int]:
    """Fuyu: the image's ``|SPEAKER|`` tokens and the ``|NEWLINE|`` closing each row."""
    return list(range(int(img.span[0]), int(img.span[-1]) + 2))


def merged_layout(img: _Image) -> list[View]:
    grid = img.inputs.get("image_grid_thw")
    if grid is None:
        raise ImageLayoutError("Qwen2-VL inputs without image_grid_thw: pass the processor's output whole.")
    t, h, w = (int(x) for x in grid[img.flat_index])
    merge = img.config.vision_config.spatial_merge_size
    width, height = img.size
    if t != 1:
        raise ImageLayoutError(f"image_grid_thw has {t} temporal steps: a video, not an image; tv_lens maps images.")
    return [View("image", h // merge, w // merge, (0.0, 0.0, float(width), float(height)))]


def pooled_layout(img: _Image) -> list[View]:
    if getattr(img.image_processor, "do_pan_and_scan", False):
        raise ImageLayoutError("Gemma 3 with pan-and-scan: each crop is a span of its own whose place in the image "
                               "tv_lens does not compute yet; set image_processor.do_pan_and_scan = False.")
    side = math.isqrt(int(img.config.mm_tokens_per_image))
    width, height = img.size
    return [View("image", side, side, (0.0, 0.0, float(width), float(height)))]


def perceiver_layout(img: _Image) -> list[View]:
    raise ImageLayoutError(
        f"{img.model.cfg.family} has no spatial layout for its image tokens: its perceiver resampler turns the "
        "patches into learned latent queries, each of which attends to EVERY patch, so no image token stands for "
        "a place in the picture. Look at the vision tower's attention instead, or use a family with patch tokens.")


#: layout name -> (views of one image, the image's token indices or None for the adapter's span)
LAYOUTS: dict[str, tuple[Callable[[_Image], list[View]], Callable[[_Image], list[int]] | None]] = {
    "clip": (clip_layout, None),
    "anyres": (anyres_layout, None),
    "tiles": (tiles_layout, None),
    "patch_rows": (patch_rows_layout, patch_rows_tokens),
    "merged": (merged_layout, None),
    "pooled": (pooled_layout, None),
    "perceiver": (perceiver_layout, None),
}


# ------------------------------------------------------------------------------------------------ entry point
def _image_size(image: Any) -> tuple[int, int]:
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return tuple(int(v) for v in image.size)
    from PIL import Image

    with Image.open(image) as opened:   # a path: only the header is read
        return opened.size


def _open(image: Any):
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return image
    from PIL import Image

    with Image.open(image) as opened:
        return opened.convert("RGB")


def _images_per_row(inputs: Any, images: Any, n_rows: int) -> list[list]:
    prompts = getattr(inputs, "prompts", None)
    if prompts is None and not isinstance(inputs, (str, dict)) and isinstance(inputs, Sequence) and inputs \
            and hasattr(inputs[0], "images"):
        prompts = list(inputs)
    if prompts is None and hasattr(inputs, "images") and hasattr(inputs, "pieces"):
        prompts = [inputs]
    if prompts is not None:
        return [list(p.images) for p in prompts]
    if images is None:
        raise InputError("image_geometry needs the images themselves (their sizes decide the layout): pass images=, "
                         "or give Prompt objects.")
    if not isinstance(images, (list, tuple)):
        return [[images]]
    if images and all(isinstance(i, (list, tuple)) for i in images):
        return [list(i) for i in images]
    return [list(images)] if n_rows == 1 else [[i] for i in images]


def image_geometry(model, inputs: Any, images: Any = None, row: int = 0) -> list[ImageGeometry]:
    """Where every image token of one prompt sits in its image.

    Args:
        model: a multimodal :class:`~tv_lens.HookedMultimodalModel`.
        inputs: what the model runs: text with image placeholders (then ``images=``), a
            :class:`~tv_lens.prompts.Prompt` or a list of them (their images are used), or a ``PromptBatch``.
        images: the images, as for ``model.prepare`` (needed with text inputs).
        row: which prompt of a batch.

    Returns:
        One :class:`ImageGeometry` per image of the prompt, in order; ``geometry.frame`` has one row per token.

    Raises:
        ImageLayoutError: a text-only model, a family without a spatial layout (Idefics2's perceiver latents), or a
            processor whose layout disagrees with this arithmetic.
        InputError: images missing, or ``row`` out of range.
    """
    layout_name = getattr(model.adapter, "image_layout", None)
    if not model.adapter.is_multimodal or layout_name is None:
        raise ImageLayoutError(f"{model.cfg.family} declares no image layout (Adapter.image_layout): "
                               + ("it reads no images." if not model.adapter.is_multimodal else
                                  "add one of tv_lens.image_geometry.LAYOUTS to its adapter."))
    views_of, tokens_of = LAYOUTS[layout_name]
    encoded = model.as_inputs(inputs, images=images if not hasattr(inputs, "keys") else None)
    n_rows = int(encoded["input_ids"].shape[0])
    if not 0 <= row < n_rows:
        raise InputError(f"row={row} but the batch has {n_rows} prompt(s).")
    spans = model.positions(encoded).images
    per_row = _images_per_row(inputs, images, n_rows)
    if len(per_row) != n_rows or len(per_row[row]) != len(spans[row]):
        raise InputError(f"Prompt {row} has {len(spans[row])} image span(s) but {len(per_row[row]) if row < len(per_row) else 0} "
                         "image(s) were given for it.")
    out = []
    flat_before = sum(len(s) for s in spans[:row])
    for j, (span, image) in enumerate(zip(spans[row], per_row[row])):
        img = _Image(model, encoded, row, j, flat_before + j, len(spans[row]), span.cpu(), _image_size(image))
        views = views_of(img)
        tokens = tokens_of(img) if tokens_of is not None else span.tolist()
        frame = _frame(views, tokens, img.size)
        out.append(ImageGeometry(j, img.size, tuple(views), frame, model.cfg.family, image=_open(image)))
    return out


__all__ = ["COLUMNS", "LAYOUTS", "ImageGeometry", "View", "image_geometry"]
