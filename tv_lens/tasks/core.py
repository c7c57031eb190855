"""``TaskItem`` and ``Task``: a task's items, its instruction and its deterministic val / test / train splits."""

from __future__ import annotations

import html
import random
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ImageError, TaskError

__all__ = ["TaskItem", "Task", "TaskWarning", "split_items"]

SPLITS = ("val", "test", "train")

MAX_IMAGE_PIXELS = 64_000_000
"""Largest image (width × height) :meth:`TaskItem.open_image` decodes: 64 megapixels (e.g. 8000 × 8000), about
192 MB as RGB. Larger files raise :class:`~tv_lens.errors.ImageError` before any pixel is decoded. Raise this
module attribute (``tv_lens.tasks.core.MAX_IMAGE_PIXELS = ...``) to open bigger images on purpose."""

MAX_IMAGE_SIDE = 32_768
"""Longest width or height :meth:`TaskItem.open_image` accepts."""


class TaskWarning(UserWarning):
    """Something about a task worth knowing that does not stop it from loading (small splits, dropped duplicates)."""


@dataclass(frozen=True)
class TaskItem:
    """One query of a task.

    Attributes:
        input: the text form of the query (``"France"``).
        output: the label (``"Paris"``).
        image: absolute path of the image that shows the input (a flag, an emoji), or ``None``. The file may not exist
            yet: it is only opened by :meth:`open_image`.
    """

    input: str
    output: str
    image: str | None = None

    @property
    def has_image(self) -> bool:
        """Whether the item has an image slot (the file itself may still be missing; see :meth:`image_exists`)."""
        return self.image is not None

    def image_exists(self) -> bool:
        """Whether the item has an image and the file is there."""
        return self.image is not None and Path(self.image).is_file()

    def open_image(self):
        """The item's image as a PIL RGB image (transparency is composited on white).

        16-bit grey PNGs are scaled to 8 bits (not clipped to white). Images over :data:`MAX_IMAGE_PIXELS` or
        :data:`MAX_IMAGE_SIDE`, and empty (0×0) ones, raise before their pixels are decoded.

        Raises:
            TaskError: the item has no image. ImageError (a TaskError): the file is not a readable image, is empty,
                or is over the size limit (the message names the file).
            FileNotFoundError: the image file does not exist (the message names it and how to build shipped images).
        """
        from PIL import Image, UnidentifiedImageError

        if self.image is None:
            raise TaskError(f"item {self.input!r} has no image (TaskItem.image is None); use task.with_images()")
        path = Path(self.image)
        if not path.is_file():
            hint = ""
            if "tv_lens" in path.parts and "images" in path.parts:
                hint = " The shipped images are rendered by `python -m tv_lens.reference.build_images`."
            raise FileNotFoundError(f"image file for item {self.input!r} not found: {path}.{hint}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    _check_size(im.size, path, self.input)   # from the header, before decoding pixels
                    im.load()
                    return _to_rgb(im)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:   # PIL checks at open, over twice its own limit
            raise ImageError(f"image file {path} (item {self.input!r}) is over the limit ({MAX_IMAGE_PIXELS:,} "
                             f"pixels; PIL: {exc})") from None
        except Image.DecompressionBombWarning as exc:  # pragma: no cover - the size check comes first
            raise ImageError(f"image file {path} (item {self.input!r}) is too large to decode: {exc}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"cannot read image file {path} (item {self.input!r}): {exc}") from exc


def _check_size(size: tuple[int, int], path: Path, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image file {path} (item {name!r}) is empty ({width}×{height} pixels)")
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"image file {path} (item {name!r}) is {width}×{height} pixels, over the limit "
                         f"({MAX_IMAGE_PIXELS:,} pixels, {MAX_IMAGE_SIDE} a side; see "
                         "tv_lens.tasks.core.MAX_IMAGE_PIXELS): shrink it, or raise the limit if you trust the file")


def _to_rgb(im):
    """8-bit RGB: transparency composited on white; 16-bit and 32-bit grey scaled (not clipped) to 0..255."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            top = 1.0 if arr.size and float(arr.max()) <= 1.0 else 255.0
        elif im.mode == "I" and arr.size and float(arr.max()) > 65535:
            top = float(2 ** 32 - 1)
        else:
            top = 65535.0 if (im.mode.startswith("I;16") or im.mode == "I") else 255.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _counts(items: Sequence[TaskItem]) -> tuple[int, int]:
    return len(items), sum(1 for it in items if it.image is not None)


@dataclass(eq=False)
class Task:
    """A task: instruction, task word, all items, and three disjoint splits.

    ``val`` (layer selection) and ``test`` (reporting) are drawn preferring items that have an image, so image queries
    can be evaluated on them; ``train`` is the rest: the pool ICL demonstrations are drawn from. Build one with
    :func:`tv_lens.tasks.load` or the ``from_*`` loaders rather than by hand.

    Attributes:
        name: task name (``"country-capital"``).
        instruction: the paper's instruction (``"The capital city of the country:"``); ``""`` when unknown.
        task_word: the word naming the task, used for the "task" phase of logit-lens curves (``"capital"``); ``""``
            when unknown.
        items: every item, in file order.
        val, test, train: disjoint subsets of ``items``, each in file order.
        source: where the data comes from. notes: conventions of the labels. seed: the split seed (None: given).
        shipped: a task that ships with tv_lens (:func:`tv_lens.tasks.load` by name): its image re-split in
            :meth:`with_images` is part of its documented protocol, so it does not warn (user data does).
    """

    name: str
    instruction: str
    task_word: str
    items: list[TaskItem]
    val: list[TaskItem] = field(default_factory=list)
    test: list[TaskItem] = field(default_factory=list)
    train: list[TaskItem] = field(default_factory=list)
    source: str = ""
    notes: str = ""
    seed: int | None = None
    shipped: bool = False

    def __post_init__(self) -> None:
        if not self.items:
            raise TaskError(f"task {self.name!r} has no items")
        all_items = set(self.items)
        seen: dict[TaskItem, str] = {}
        for split in SPLITS:
            for it in getattr(self, split):
                if it not in all_items:
                    raise TaskError(f"task {self.name!r}: {split} item {it.input!r} is not one of the task's items")
                if it in seen and seen[it] != split:
                    raise TaskError(
                        f"task {self.name!r}: item {it.input!r} is in both {seen[it]} and {split}; splits must be "
                        "disjoint"
                    )
                seen[it] = split

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    @property
    def splits(self) -> dict[str, list[TaskItem]]:
        """``{"val": ..., "test": ..., "train": ...}``."""
        return {s: getattr(self, s) for s in SPLITS}

    def split(self, name: str) -> list[TaskItem]:
        """One split by name (``"val"``, ``"test"``, ``"train"``, or ``"all"`` for every item)."""
        if name == "all":
            return list(self.items)
        if name not in SPLITS:
            raise TaskError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)} or 'all'")
        return getattr(self, name)

    @property
    def labels(self) -> list[str]:
        """The distinct outputs, sorted."""
        return sorted({it.output for it in self.items})

    @property
    def n_with_images(self) -> int:
        """How many items have an image slot."""
        return _counts(self.items)[1]

    def to_pairs(self, split: str = "all") -> list[tuple[str, str]]:
        """``[(input, output), ...]`` of a split (default: every item)."""
        return [(it.input, it.output) for it in self.split(split)]

    # -------------------------------------------------------------- derived
    def with_images(self, *, existing: bool = False, min_train: int = 5) -> Task:
        """The task restricted to items that have an image; each split is filtered the same way, so they stay disjoint.

        When fewer than ``min_train`` imaged items are left in ``train`` (4 of the 6 shipped tasks have none: their
        images all went to val/test), the imaged items are RE-SPLIT so that ``train`` keeps a quarter of them (at
        least ``min_train``, the paper's 5 shots) and val:test keep their ratio — image ICL demos must come from
        train, never from the split being scored (:func:`tv_lens.evaluate` refuses otherwise). A
        :class:`TaskWarning` says when this happens.

        Args:
            existing: also drop items whose image file is missing on disk (default: keep every item with an image
                slot, so a missing file fails loudly in :meth:`TaskItem.open_image` instead of shrinking the task).
            min_train: the fewest imaged train items accepted without a re-split (``0``: never re-split).

        Raises:
            TaskError: no item has an image.
        """
        keep = (lambda it: it.image_exists()) if existing else (lambda it: it.image is not None)
        items = [it for it in self.items if keep(it)]
        if not items:
            what = "an image file on disk" if existing else "an image"
            raise TaskError(f"task {self.name!r}: no item has {what}")
        out = replace(self, items=items, **{s: [it for it in getattr(self, s) if keep(it)] for s in SPLITS})
        n_train = max(min_train, round(0.25 * len(items)))
        rest = len(items) - n_train
        if len(out.train) < min_train and rest < 2:
            warnings.warn(f"task {self.name!r} has {len(items)} imaged items: too few to keep min_train={min_train} "
                          "for image demos plus val and test; splits kept as they are (image ICL on it will be "
                          "refused)", TaskWarning, stacklevel=2)
        elif len(out.train) < min_train:
            ratio = len(self.val) / max(1, len(self.val) + len(self.test))
            n_val = min(rest - 1, max(1, round(rest * ratio)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TaskWarning)
                val, test, train = split_items(items, n_val=n_val, n_test=rest - n_val, seed=self.seed or 0,
                                               name=self.name)
            if not self.shipped:   # shipped tasks: this fixed re-split IS their image protocol, nothing to warn
                warnings.warn(f"task {self.name!r}: only {len(out.train)} imaged train items; re-split the "
                              f"{len(items)} imaged items into val {len(val)} / test {len(test)} / train "
                              f"{len(train)} so demos never come from the split being scored", TaskWarning,
                              stacklevel=2)
            out = replace(out, val=val, test=test, train=train)
        for s in ("val", "test"):
            if not getattr(out, s):
                warnings.warn(f"task {self.name!r}: the {s} split has no items with images", TaskWarning, stacklevel=2)
        return out

    def resplit(self, *, n_val: int = 30, n_test: int = 100, seed: int = 0) -> Task:
        """The same items with new splits (see :func:`split_items`)."""
        val, test, train = split_items(self.items, n_val=n_val, n_test=n_test, seed=seed, name=self.name)
        return replace(self, val=val, test=test, train=train, seed=seed)

    # ------------------------------------------------------------- display
    def _summary(self) -> str:
        n, n_img = _counts(self.items)
        sizes = ", ".join(f"{s} {len(getattr(self, s))}" for s in SPLITS)
        return f"{n} items, {n_img} with images | {sizes}"

    def __repr__(self) -> str:
        return f"Task({self.name!r}: {self._summary()} | instruction={self.instruction!r})"

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = []
        for s in SPLITS:
            items = getattr(self, s)
            n, n_img = _counts(items)
            ex = ", ".join(f"{esc(it.input)} &rarr; {esc(it.output)}" for it in items[:3])
            rows.append(f"<tr><td>{s}</td><td>{n}</td><td>{n_img}</td><td>{ex}{' &hellip;' if n > 3 else ''}</td></tr>")
        n, n_img = _counts(self.items)
        return (
            f"<div><b>Task</b> <code>{esc(self.name)}</code>: {n} items, {n_img} with images<br>"
            f"instruction: <i>{esc(self.instruction) or '(none)'}</i>; task word: <i>{esc(self.task_word) or '(none)'}"
            f"</i><table><thead><tr><th>split</th><th>items</th><th>with image</th><th>examples</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )


def split_items(
    items: Sequence[TaskItem], *, n_val: int = 30, n_test: int = 100, seed: int = 0, name: str = "task"
) -> tuple[list[TaskItem], list[TaskItem], list[TaskItem]]:
    """Deterministic disjoint ``(val, test, train)`` splits of ``items``.

    val gets ``n_val`` items and test ``n_test`` (fewer, with a :class:`TaskWarning`, when the task is too small);
    both are drawn preferring items that have an image. When there are fewer images than ``n_val + n_test`` they are
    shared between val and test in proportion to the split sizes, so both can evaluate image queries. Everything else
    is ``train``. The draw depends only on ``seed`` and the items' order; each split keeps file order.

    Raises:
        TaskError: no items, negative sizes, or not enough items for ``n_val`` plus at least one test item.
    """
    items = list(items)
    if not items:
        raise TaskError(f"task {name!r} has no items")
    for arg, v in (("n_val", n_val), ("n_test", n_test)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise TaskError(f"{arg} must be a non-negative int, got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TaskError(f"seed must be an int, got {seed!r}")
    total = len(items)
    if n_val > total or (n_test > 0 and total - n_val < 1):
        raise TaskError(
            f"task {name!r} has {total} items: not enough for n_val={n_val} plus a test split; "
            f"pass smaller sizes, e.g. load(..., n_val={max(1, total // 3)}, n_test={total - max(1, total // 3)})"
        )
    test_n = min(n_test, total - n_val)
    if test_n < n_test:
        warnings.warn(
            f"task {name!r} has only {total} items: the test split has {test_n} items instead of {n_test} "
            f"(val {n_val}, train 0)",
            TaskWarning,
            stacklevel=3,
        )
    rng = random.Random(seed)
    img = [i for i, it in enumerate(items) if it.image is not None]
    txt = [i for i, it in enumerate(items) if it.image is None]
    rng.shuffle(img)
    rng.shuffle(txt)
    want = n_val + test_n
    if len(img) >= want:
        val_img, test_img = n_val, test_n
    else:
        val_img = min(n_val, round(len(img) * n_val / want)) if want else 0
        test_img = min(test_n, len(img) - val_img)
    val_txt, test_txt = n_val - val_img, test_n - test_img
    val_idx = img[:val_img] + txt[:val_txt]
    test_idx = img[val_img : val_img + test_img] + txt[val_txt : val_txt + test_txt]
    taken = set(val_idx) | set(test_idx)
    val = [items[i] for i in sorted(val_idx)]
    test = [items[i] for i in sorted(test_idx)]
    train = [it for i, it in enumerate(items) if i not in taken]
    return val, test, train


def check_items(items: Iterable[TaskItem], *, name: str) -> list[TaskItem]:
    """Drop exact duplicate items (with a warning); the same query (input and image) with two labels raises."""
    out: list[TaskItem] = []
    seen: dict[tuple[str, str | None], TaskItem] = {}
    n_dup = 0
    for it in items:
        key = (it.input, it.image)
        prev = seen.get(key)
        if prev is not None:
            if prev.output != it.output:
                raise TaskError(
                    f"task {name!r}: input {it.input!r} has two labels, {prev.output!r} and {it.output!r}; "
                    "a query must have one label"
                )
            n_dup += 1
            continue
        seen[key] = it
        out.append(it)
    if n_dup:
        warnings.warn(f"task {name!r}: dropped {n_dup} duplicate item(s)", TaskWarning, stacklevel=3)
    if not out:
        raise TaskError(f"task {name!r} has no items")
    return out
