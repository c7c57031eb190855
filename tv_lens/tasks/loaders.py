"""Loading tasks: the six shipped tasks, the paper's released data, a user's JSON / CSV file or folder, Python pairs.

Every loader returns a :class:`~tv_lens.tasks.Task` with deterministic val / test / train splits. Nothing is ever
unpickled: tasks are JSON or CSV text.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import shutil
import zipfile
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import TaskError, UnsafePathError
from ..io import atomic_write, atomic_write_text
from .core import Task, TaskItem, check_items, split_items

__all__ = [
    "DATA_DIR",
    "IMAGES_DIR",
    "PAPER_REPO_ID",
    "PAPER_TASKS",
    "list_tasks",
    "load",
    "from_json",
    "from_csv",
    "from_pairs",
    "from_paper_folder",
    "fetch_paper_data",
    "save_json",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
# tv_lens's own shipped images: a task file may always point there (a saved copy of a shipped task stays loadable)
PACKAGE_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
"""Where the shipped task files live (``{name}.json``)."""

IMAGES_DIR = Path(__file__).resolve().parents[1] / "data" / "images"
"""Default root of the shipped images (``flags/fr.png``, ``emoji/u1f415.png``); built by
``python -m tv_lens.reference.build_images``."""

PAPER_TASKS = ("country-capital", "country-currency", "animal-latin", "animal-young", "food-color", "food-flavor")
"""The paper's six tasks, in its order."""

PAPER_REPO_ID = "g-luo/vlm-cross-modal-reps"
"""The Hugging Face dataset repository holding the paper's released data (``data/annotations.zip``,
``data/images.zip``)."""

_PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------------------- rows
def _text(value: Any, *, field_name: str, where: str) -> str:
    if isinstance(value, bool) or value is None or not isinstance(value, str | int | float):
        raise TaskError(f"{where}: {field_name!r} must be a string, got {type(value).__name__} {value!r}")
    text = str(value).strip()
    if not text:
        what = "label (output)" if field_name == "output" else field_name
        raise TaskError(f"{where}: empty or whitespace-only {what}")
    return text


def _resolve_image(key: Any, *, root: Path | None, where: str, confine: bool = False) -> str | None:
    """The absolute path of an image key (relative keys are relative to ``root``).

    With ``confine`` the path must stay inside ``root`` once ``..`` and symlinks are resolved; else
    :class:`~tv_lens.errors.UnsafePathError` (pass ``allow_outside_root=True`` to the loader to opt out).
    """
    if key is None or (isinstance(key, str) and not key.strip()):
        return None
    if not isinstance(key, str | os.PathLike):
        raise TaskError(f"{where}: 'image' must be a path string or null, got {type(key).__name__} {key!r}")
    if "\x00" in str(key):
        raise TaskError(f"{where}: 'image' {str(key)!r} holds a NUL character")
    path = Path(str(key).strip()).expanduser()
    if not path.is_absolute():
        path = (root if root is not None else Path.cwd()) / path
    resolved = os.path.normpath(str(path.absolute()))
    if confine and root is not None and not _is_inside(resolved, PACKAGE_DATA_DIR):
        check_inside(resolved, root, where=where)
    return resolved


def _is_inside(path: _PathLike, root: _PathLike) -> bool:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([real, real_root]) == real_root
    except ValueError:   # different drives (Windows)
        return False


def check_inside(path: _PathLike, root: _PathLike, *, where: str = "") -> None:
    """Raise :class:`~tv_lens.errors.UnsafePathError` unless ``path`` (``..``, symlinks resolved) lies in ``root``."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if not _is_inside(path, root):
        prefix = f"{where}: " if where else ""
        raise UnsafePathError(f"{prefix}image path {str(path)!r} resolves to {real!r}, outside the data root "
                              f"{real_root!r} (via '..', an absolute path or a symlink). Move the image into the "
                              "data folder, or pass allow_outside_root=True if you trust this file.")


def _item_from_row(row: Any, *, where: str, root: Path | None, confine: bool = False) -> TaskItem:
    if isinstance(row, TaskItem):
        return TaskItem(
            _text(row.input, field_name="input", where=where),
            _text(row.output, field_name="output", where=where),
            _resolve_image(row.image, root=root, where=where, confine=confine),
        )
    if isinstance(row, Mapping):
        missing = [k for k in ("input", "output") if k not in row]
        if missing:
            raise TaskError(f"{where}: missing {' and '.join(repr(m) for m in missing)} (has {sorted(map(str, row))})")
        inp, out, img = row["input"], row["output"], row.get("image")
    elif isinstance(row, list | tuple):
        if len(row) not in (2, 3):
            raise TaskError(f"{where}: expected (input, output) or (input, output, image), got {len(row)} values")
        inp, out, img = row[0], row[1], row[2] if len(row) == 3 else None
    else:
        raise TaskError(f"{where}: expected an object with 'input' and 'output', got {type(row).__name__} {row!r}")
    return TaskItem(
        _text(inp, field_name="input", where=where),
        _text(out, field_name="output", where=where),
        _resolve_image(img, root=root, where=where, confine=confine),
    )


MAX_JSON_DEPTH = 64
"""Deepest nesting a task JSON file may have (tasks need 3 levels); deeper files raise ``TaskError``."""


def _json_depth_ok(text: str, limit: int) -> bool:
    """Whether brackets nest at most ``limit`` deep (strings skipped), without recursing."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"task file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8") from None
    if not _json_depth_ok(text, MAX_JSON_DEPTH):
        raise TaskError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels; a task file needs 3")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from exc
    except RecursionError:   # pragma: no cover - the depth check comes first
        raise TaskError(f"{path}: JSON nested too deeply") from None


def _rows_and_meta(data: Any, path: Path) -> tuple[list[Any], dict[str, Any]]:
    """Accept ``{"items": [...], ...meta}``, the paper's ``{"data": [...]}`` or a bare list."""
    if isinstance(data, list):
        return data, {}
    if isinstance(data, dict):
        for key in ("items", "data"):
            if key in data:
                rows = data[key]
                if not isinstance(rows, list):
                    raise TaskError(f"{path}: {key!r} must be a list of items, got {type(rows).__name__}")
                return rows, {k: v for k, v in data.items() if k != key}
        raise TaskError(f"{path}: expected a list of items or an object with an 'items' list (keys: {sorted(data)})")
    raise TaskError(f"{path}: expected a list of items or an object with an 'items' list, got {type(data).__name__}")


def _items(rows: Iterable[Any], *, where: str, root: Path | None, name: str, confine: bool = False) -> list[TaskItem]:
    items = [_item_from_row(row, where=f"{where}: item {i}", root=root, confine=confine)
             for i, row in enumerate(rows)]
    if not items:
        raise TaskError(f"{where}: task {name!r} has no items")
    return check_items(items, name=name)


def _meta_str(meta: Mapping[str, Any], key: str, given: str | None, default: str = "") -> str:
    if given is not None:
        return given
    value = meta.get(key, default)
    return value if isinstance(value, str) else default


def _build(items: list[TaskItem], *, name: str, instruction: str, task_word: str, n_val: int, n_test: int, seed: int,
           source: str = "", notes: str = "", shipped: bool = False) -> Task:
    val, test, train = split_items(items, n_val=n_val, n_test=n_test, seed=seed, name=name)
    return Task(name=name, instruction=instruction, task_word=task_word, items=items, val=val, test=test, train=train,
                source=source, notes=notes, seed=seed, shipped=shipped)


# -------------------------------------------------------------------------------------------------- shipped tasks
def list_tasks() -> list[str]:
    """Names of the shipped tasks: the paper's six in its order, then any other file in ``DATA_DIR``."""
    names = {p.stem for p in DATA_DIR.glob("*.json")}
    return [t for t in PAPER_TASKS if t in names] + sorted(names - set(PAPER_TASKS))


@lru_cache(maxsize=None)
def _shipped(name: str) -> dict[str, Any]:
    return _read_json(DATA_DIR / f"{name}.json")


def _normalize_name(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _shipped_meta(name: str) -> dict[str, Any]:
    if name in list_tasks():
        return {k: v for k, v in _shipped(name).items() if k != "items"}
    return {}


def _unknown_task(name: str) -> TaskError:
    known = list_tasks()
    close = difflib.get_close_matches(_normalize_name(name), known, n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return TaskError(
        f"unknown task {name!r}.{hint} Known tasks: {', '.join(known)}. "
        "A path to a .json / .csv file or to a folder also works."
    )


def _load_shipped(name: str, *, n_val: int, n_test: int, seed: int, image_root: _PathLike | None,
                  allow_outside_root: bool = False) -> Task:
    data = _shipped(name)
    rows, meta = _rows_and_meta(data, DATA_DIR / f"{name}.json")
    root = Path(image_root) if image_root is not None else IMAGES_DIR
    items = _items(rows, where=str(DATA_DIR / f"{name}.json"), root=root, name=name,
                   confine=not allow_outside_root and image_root is not None)
    return _build(items, name=meta.get("name", name), instruction=meta.get("instruction", ""),
                  task_word=meta.get("task_word", ""), n_val=n_val, n_test=n_test, seed=seed,
                  source=meta.get("source", ""), notes=meta.get("notes", ""), shipped=True)


# -------------------------------------------------------------------------------------------------- user files
def from_json(path: _PathLike, *, name: str | None = None, instruction: str | None = None,
              task_word: str | None = None, image_root: _PathLike | None = None, n_val: int = 30, n_test: int = 100,
              seed: int = 0, allow_outside_root: bool = False) -> Task:
    """A task from a JSON file.

    Accepted shapes: ``{"name", "instruction", "task_word", "items": [{"input", "output", "image"?}, ...]}`` (the shipped
    format, see :func:`save_json`), the paper's ``{"data": [...]}``, or a bare list of items. ``image`` paths are
    relative to ``image_root`` (default: the JSON file's folder) unless absolute. Keyword arguments override the file's
    metadata; ``name`` defaults to the file's ``name`` field or its stem. Image paths must stay inside the image
    root (no ``..``, absolute path or symlink leading out) unless ``allow_outside_root=True``.

    Raises:
        FileNotFoundError: no such file. TaskError: invalid JSON, not UTF-8, nested deeper than
        :data:`MAX_JSON_DEPTH`, a malformed item (file and item index named), an empty label, no items, or too few
        items for the splits. UnsafePathError: an image path outside the root.
    """
    path = Path(path)
    rows, meta = _rows_and_meta(_read_json(path), path)
    name = name or _meta_str(meta, "name", None, path.stem) or path.stem
    known = _shipped_meta(name)
    root = Path(image_root) if image_root is not None else path.parent
    items = _items(rows, where=str(path), root=root, name=name, confine=not allow_outside_root)
    return _build(items, name=name, instruction=_meta_str(meta, "instruction", instruction, known.get("instruction", "")),
                  task_word=_meta_str(meta, "task_word", task_word, known.get("task_word", "")),
                  n_val=n_val, n_test=n_test, seed=seed, source=_meta_str(meta, "source", None, str(path)),
                  notes=_meta_str(meta, "notes", None))


def from_csv(path: _PathLike, *, name: str | None = None, instruction: str | None = None,
             task_word: str | None = None, image_root: _PathLike | None = None, n_val: int = 30, n_test: int = 100,
             seed: int = 0, allow_outside_root: bool = False) -> Task:
    """A task from a CSV file with a header row and columns ``input``, ``output`` and optionally ``image``.

    Other columns are ignored; a column named twice raises. ``image`` cells are paths relative to ``image_root``
    (default: the CSV file's folder) and must stay inside it unless ``allow_outside_root=True``; an empty cell means
    no image. ``name`` defaults to the file's stem; for a shipped task's name the instruction and
    task word default to the shipped ones.

    Raises:
        FileNotFoundError: no such file. TaskError: a missing ``input`` / ``output`` column, a row with the wrong number
        of fields or an empty value (file and line named), no rows, or too few items for the splits.
    """
    path = Path(path)
    name = name or path.stem
    root = Path(image_root) if image_root is not None else path.parent
    rows: list[TaskItem] = []
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"task file not found: {path}") from None
    with fh:
        reader = csv.DictReader(fh)
        try:
            header = [h.strip() if isinstance(h, str) else h for h in (reader.fieldnames or [])]
        except UnicodeDecodeError as exc:
            raise TaskError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8") \
                from None
        except csv.Error as exc:
            raise TaskError(f"{path}: malformed CSV header: {exc}") from None
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise TaskError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the header; "
                            "which one holds the data would be a guess")
        reader.fieldnames = header
        missing = [c for c in ("input", "output") if c not in header]
        if missing:
            raise TaskError(f"{path}: missing column(s) {', '.join(missing)}; the header must name input, output "
                            f"and optionally image (got {header})")
        try:
            for row in reader:
                where = f"{path}: line {reader.line_num}"
                if None in row or any(row.get(c) is None for c in header):
                    n = sum(1 for k, v in row.items() if k is not None and v is not None) + len(row.get(None) or [])
                    raise TaskError(f"{where}: malformed row: {n} field(s), the header has {len(header)} "
                                    f"({', '.join(header)})")
                if not any((v or "").strip() for k, v in row.items() if k is not None):
                    continue  # blank line
                rows.append(_item_from_row({"input": row["input"], "output": row["output"], "image": row.get("image")},
                                           where=where, root=root, confine=not allow_outside_root))
        except csv.Error as exc:
            raise TaskError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise TaskError(f"{path}: near line {reader.line_num}: not UTF-8 text ({exc.reason}); save the file as "
                            "UTF-8") from None
    if not rows:
        raise TaskError(f"{path}: task {name!r} has no items")
    known = _shipped_meta(name)
    items = check_items(rows, name=name)
    return _build(items, name=name, instruction=instruction if instruction is not None else known.get("instruction", ""),
                  task_word=task_word if task_word is not None else known.get("task_word", ""),
                  n_val=n_val, n_test=n_test, seed=seed, source=str(path))


def from_pairs(pairs: Iterable[Any], *, name: str = "custom", instruction: str = "", task_word: str = "",
               image_root: _PathLike | None = None, n_val: int = 30, n_test: int = 100, seed: int = 0,
               allow_outside_root: bool = True) -> Task:
    """A task from Python data: ``[("France", "Paris"), ...]``.

    Each element is ``(input, output)``, ``(input, output, image)``, a dict with ``input`` / ``output`` / ``image`` or a
    :class:`TaskItem`. Relative image paths are resolved against ``image_root`` (default: the working directory).
    Python data is the caller's own, so paths are not confined unless ``allow_outside_root=False`` (with an
    ``image_root``).

    Example::

        task = from_pairs([("France", "Paris"), ("Japan", "Tokyo"), ...], name="capitals",
                          instruction="The capital city of the country:", n_val=5, n_test=20)

    Raises:
        TaskError: a malformed pair (its index named), an empty label, no pairs, or too few for the splits.
    """
    root = Path(image_root) if image_root is not None else None
    items = _items(list(pairs), where="pairs", root=root, name=name, confine=not allow_outside_root)
    return _build(items, name=name, instruction=instruction, task_word=task_word, n_val=n_val, n_test=n_test,
                  seed=seed, source="python pairs")


def save_json(task: Task, path: _PathLike, *, relative_to: _PathLike | None = None) -> Path:
    """Write ``task`` in the shipped JSON format (items only; splits are re-drawn on load).

    Image paths are written relative to ``relative_to`` (default: the JSON file's folder) when they lie under it, so the
    file and its images can move together. Written atomically. Returns the path.
    """
    path = Path(path)
    base = Path(relative_to) if relative_to is not None else path.parent
    base = Path(os.path.abspath(base))

    def rel(img: str | None) -> str | None:
        if img is None:
            return None
        try:
            return Path(img).relative_to(base).as_posix()
        except ValueError:
            return img

    doc = {"name": task.name, "instruction": task.instruction, "task_word": task.task_word, "source": task.source,
           "notes": task.notes,
           "items": [{"input": it.input, "output": it.output, "image": rel(it.image)} for it in task.items]}
    return atomic_write_text(path, json.dumps(doc, ensure_ascii=False, indent=1) + "\n")


# -------------------------------------------------------------------------------------------------- paper format
def _annotation_dir(folder: Path, task: str | None) -> Path | None:
    pattern = f"{task}_val.json" if task else "*_val.json"
    for cand in (folder, folder / "annotations", folder / "data" / "annotations", folder / "data"):
        if cand.is_dir() and any(cand.glob(pattern)):
            return cand
    return None


def _paper_tasks_in(folder: Path) -> list[str]:
    return sorted(p.name[: -len("_val.json")] for p in folder.glob("*_val.json"))


def _paper_root(ann: Path, image_root: _PathLike | None) -> Path:
    """The folder paper-format image keys must stay inside: ``image_root``, else the annotations' parent."""
    return Path(image_root) if image_root is not None else ann.parent


def _paper_image_resolver(ann: Path, image_root: _PathLike | None):
    if image_root is not None:
        root = Path(image_root)
        return lambda key: root / key
    candidates = [ann, ann / "images", ann.parent, ann.parent / "images"]

    def resolve(key: str) -> Path:
        for c in candidates:
            if (c / key).is_file():
                return c / key
        # nothing on disk yet: the paper's layout (data/annotations/*.json, keys relative to data/) or images/ beside
        return (ann.parent / key) if ann.name == "annotations" else (ann / "images" / key)

    return resolve


def from_paper_folder(folder: _PathLike, task: str | None = None, *, image_root: _PathLike | None = None,
                      instruction: str | None = None, task_word: str | None = None,
                      allow_outside_root: bool = False) -> Task:
    """A task from the paper's released format: ``{task}_val.json`` and ``{task}_test.json``.

    Each file is a list of ``{"input", "output", "image"}`` (or ``{"data": [...]}``). ``folder`` may be the folder of
    those files or one above it (``annotations/`` or ``data/annotations/`` inside). ``image`` is a path relative to
    ``image_root``; by default the first of: the annotation folder, its ``images/`` subfolder, its parent, the parent's
    ``images/``, where the file exists. The splits are the paper's: ``val`` and ``test`` as given, ``train`` empty
    (the paper draws ICL demos from the same split, excluding the query). ``task`` may be omitted when the folder holds
    one task. Instruction and task word default to the shipped task of the same name.

    Raises:
        FileNotFoundError: no such folder. TaskError: no ``{task}_val.json`` there (the tasks found are listed), a
        missing split file, malformed items, an empty split, or an item in both val and test.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"paper data folder not found: {folder}")
    if task is None:
        ann = _annotation_dir(folder, None)
        found = _paper_tasks_in(ann) if ann else []
        if len(found) != 1:
            raise TaskError(f"{folder}: pass task=...; found {len(found)} tasks in the paper format "
                            f"({', '.join(found) or 'no *_val.json files'})")
        task = found[0]
    ann = _annotation_dir(folder, task)
    if ann is None:
        any_ann = _annotation_dir(folder, None)
        found = _paper_tasks_in(any_ann) if any_ann else []
        raise TaskError(f"{folder}: no {task}_val.json (also looked in annotations/ and data/annotations/); "
                        f"tasks found: {', '.join(found) or 'none'}")
    resolve = _paper_image_resolver(ann, image_root)
    splits: dict[str, list[TaskItem]] = {}
    for split in ("val", "test"):
        path = ann / f"{task}_{split}.json"
        if not path.is_file():
            raise TaskError(f"{ann}: {task}_val.json is there but {path.name} is missing")
        rows, _ = _rows_and_meta(_read_json(path), path)
        fixed = []
        root = _paper_root(ann, image_root)
        for i, row in enumerate(rows):
            if isinstance(row, Mapping) and isinstance(row.get("image"), str) and row["image"].strip():
                row = {**row, "image": str(resolve(row["image"].strip()))}
                if not allow_outside_root:
                    check_inside(row["image"], root, where=f"{path}: item {i}")
            fixed.append(row)
        if not fixed:
            raise TaskError(f"{path}: the {split} split of task {task!r} is empty")
        splits[split] = _items(fixed, where=str(path), root=None, name=task)
    both = set(splits["val"]) & set(splits["test"])
    if both:
        ex = next(iter(both))
        raise TaskError(f"{ann}: {len(both)} item(s) are in both {task}_val.json and {task}_test.json "
                        f"(e.g. {ex.input!r}); splits must be disjoint")
    known = _shipped_meta(task)
    return Task(name=task, instruction=instruction if instruction is not None else known.get("instruction", ""),
                task_word=task_word if task_word is not None else known.get("task_word", ""),
                items=splits["val"] + splits["test"], val=splits["val"], test=splits["test"], train=[],
                source=f"paper release format ({ann})", seed=None)


def _default_cache() -> Path:
    env = os.environ.get("TV_LENS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tv_lens"


def _safe_extract(zip_path: Path, dest: Path) -> None:
    """Extract ``zip_path`` into ``dest``, refusing members that would land outside it."""
    marker = dest / f".extracted-{zip_path.name}"
    if marker.is_file() and marker.read_text() == str(zip_path.stat().st_size):
        return
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for member in zf.infolist():
                name = member.filename
                if name.startswith("__MACOSX/") or member.is_dir():
                    continue
                target = (root / name).resolve()
                if root != target and root not in target.parents:
                    raise TaskError(f"{zip_path}: member {name!r} would be written outside {root}; refusing")
                with zf.open(member) as src, atomic_write(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile as exc:
        raise TaskError(f"{zip_path}: not a valid zip file: {exc}") from exc
    atomic_write_text(marker, str(zip_path.stat().st_size))


def _find_zips(folder: Path) -> list[Path]:
    out = []
    for name in ("annotations.zip", "images.zip"):
        for cand in (folder / "data" / name, folder / name):
            if cand.is_file():
                out.append(cand)
                break
    return out


def fetch_paper_data(task: str, cache_dir: _PathLike | None = None, repo_id: str = PAPER_REPO_ID, *,
                     images: bool = True, image_root: _PathLike | None = None,
                     allow_outside_root: bool = False) -> Task:
    """The paper's own data for ``task`` (val 30 / test 100), downloaded from the Hugging Face hub on first use.

    ``repo_id`` is a hub dataset id (default :data:`PAPER_REPO_ID`: files ``data/annotations.zip`` and
    ``data/images.zip``) or a local folder: either an extracted copy (``{task}_val.json`` inside it, its
    ``annotations/`` or ``data/annotations/``) or a mirror of the hub repository holding the zip files. Zips are
    extracted (safely: no member may land outside the target) into ``cache_dir`` (default ``$TV_LENS_CACHE`` or
    ``~/.cache/tv_lens``) under ``paper_data/``. Set ``images=False`` to fetch only the annotations.

    Raises:
        TaskError: the task is not in the data, or a malformed file. OSError: the download failed (offline machines:
        download the two zips by hand and pass their folder as ``repo_id``).
    """
    cache = Path(cache_dir) if cache_dir is not None else _default_cache()
    local = Path(repo_id).expanduser()
    if local.is_dir():
        if _annotation_dir(local, task) is not None:
            return from_paper_folder(local, task, image_root=image_root, allow_outside_root=allow_outside_root)
        zips = _find_zips(local)
        if not zips:
            raise TaskError(f"{local}: neither {task}_val.json (in it, annotations/ or data/annotations/) nor "
                            "annotations.zip (in it or data/) was found")
        dest = cache / "paper_data" / ("local-" + local.resolve().as_posix().strip("/").replace("/", "--"))
        for z in zips:
            if images or z.name != "images.zip":
                _safe_extract(z, dest / "data")
    else:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:  # pragma: no cover - huggingface_hub ships with transformers
            raise ImportError("fetch_paper_data needs huggingface_hub: pip install huggingface_hub") from exc
        dest = cache / "paper_data" / repo_id.replace("/", "--")
        files = ["data/annotations.zip"] + (["data/images.zip"] if images else [])
        for filename in files:
            try:
                zpath = hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset",
                                        cache_dir=str(cache / "hub"))
            except Exception as exc:
                raise OSError(f"could not download {filename} from the hub dataset {repo_id!r}: {exc}. Offline? "
                              f"Download it by hand and pass its folder: fetch_paper_data({task!r}, repo_id=FOLDER)"
                              ) from exc
            _safe_extract(Path(zpath), dest / "data")
    ann = _annotation_dir(dest, task)
    if ann is None:
        matches = sorted(dest.rglob(f"{task}_val.json"))
        if not matches:
            found = sorted({p.name[: -len("_val.json")] for p in dest.rglob("*_val.json")})
            raise TaskError(f"task {task!r} is not in the paper data at {dest}; tasks there: {', '.join(found) or 'none'}")
        ann = matches[0].parent
    return from_paper_folder(ann, task, image_root=image_root, allow_outside_root=allow_outside_root)


# ------------------------------------------------------------------------------------------------------------ load
def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or s.lower().endswith((".json", ".csv")) or s.startswith((".", "~"))


def _load_folder(folder: Path, *, task: str | None, n_val: int, n_test: int, seed: int,
                 image_root: _PathLike | None, allow_outside_root: bool = False) -> Task:
    opts = dict(image_root=image_root, allow_outside_root=allow_outside_root)
    if _annotation_dir(folder, task) is not None:
        return from_paper_folder(folder, task, **opts)
    for cand in ("task.json", "task.csv"):
        if (folder / cand).is_file():
            return load(folder / cand, n_val=n_val, n_test=n_test, seed=seed, **opts)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".json", ".csv") and p.is_file())
    if len(files) == 1:
        return load(files[0], n_val=n_val, n_test=n_test, seed=seed, **opts)
    raise TaskError(
        f"{folder}: cannot tell which task to load; expected the paper format ({{task}}_val.json + {{task}}_test.json, "
        f"pass task=...), a task.json / task.csv, or exactly one .json / .csv file (found {len(files)})"
    )


def load(name_or_path: _PathLike, *, n_val: int = 30, n_test: int = 100, seed: int = 0,
         image_root: _PathLike | None = None, task: str | None = None, allow_outside_root: bool = False) -> Task:
    """Load a task with deterministic val / test / train splits.

    ``name_or_path`` is one of:

    - a shipped task name (:func:`list_tasks`; case, ``_`` and spaces are forgiven: ``"Country_Capital"``),
    - a path to a ``.json`` (:func:`from_json`) or ``.csv`` (:func:`from_csv`) file,
    - a folder: the paper's format (:func:`from_paper_folder`; ``task`` picks the task when it holds several, and its
      splits are used as given), a ``task.json`` / ``task.csv`` in it, or its only ``.json`` / ``.csv`` file.

    Splits: ``val`` gets ``n_val`` items and ``test`` ``n_test`` (fewer, with a warning, for small tasks), both drawn
    preferring items that have an image; ``train`` (the ICL demo pool) is the rest. Same ``seed``, same splits.
    ``image_root`` is where image keys are resolved (shipped tasks: :data:`IMAGES_DIR`); images are only opened by
    :meth:`TaskItem.open_image`, so missing files do not stop loading. Image paths in files must stay inside their
    root (``..``, absolute paths and symlinks out raise :class:`~tv_lens.errors.UnsafePathError`) unless
    ``allow_outside_root=True``.

    Example::

        task = tvl.tasks.load("country-capital")          # 196 items; val 30, test 100, train 66
        task.val[0]                                      # TaskItem(input='...', output='...', image='/.../flags/..png')

    Raises:
        TaskError: unknown task name (the known ones are listed), malformed or empty data, too few items.
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(name_or_path, os.PathLike) or (isinstance(name_or_path, str) and (
            _looks_like_path(name_or_path) or (Path(name_or_path).exists() and
                                               _normalize_name(name_or_path) not in list_tasks()))):
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no task file or folder at {path}")
        if path.is_dir():
            return _load_folder(path, task=task, n_val=n_val, n_test=n_test, seed=seed, image_root=image_root,
                                allow_outside_root=allow_outside_root)
        suffix = path.suffix.lower()
        if suffix == ".json":
            return from_json(path, n_val=n_val, n_test=n_test, seed=seed, image_root=image_root,
                             allow_outside_root=allow_outside_root)
        if suffix == ".csv":
            return from_csv(path, n_val=n_val, n_test=n_test, seed=seed, image_root=image_root,
                            allow_outside_root=allow_outside_root)
        raise TaskError(f"{path}: unsupported file type {suffix or '(none)'}; use a .json or .csv file")
    if not isinstance(name_or_path, str):
        raise TaskError(f"load() takes a task name or a path, got {type(name_or_path).__name__}")
    name = _normalize_name(name_or_path)
    if name not in list_tasks():
        raise _unknown_task(name_or_path)
    return _load_shipped(name, n_val=n_val, n_test=n_test, seed=seed, image_root=image_root,
                         allow_outside_root=allow_outside_root)
