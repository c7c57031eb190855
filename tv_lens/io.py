"""One atomic writer for every file tv_lens writes (vectors, CLI tables, figures, task files).

A write goes to a hidden temp file in the SAME folder (``.NAME.tmpPID-RANDOM``), is flushed and ``fsync``-ed, then
moved over the target with :func:`os.replace` — atomic on POSIX and Windows for a same-folder rename. The target is
therefore either the old file or the complete new one, never a half-written mix; the temp file is removed on any
exception, ``KeyboardInterrupt`` included. A writer killed outright (SIGKILL) cannot clean up; the next write to
the same target removes such leftovers (:func:`clean_stale_temps`).

Example::

    from tv_lens.io import atomic_write
    with atomic_write("results.csv", "w") as fh:
        frame.to_csv(fh, index=False)
    atomic_write_bytes("x.bin", data)
    atomic_save("fig.html", lambda tmp: fig.write_html(tmp))     # writers that need a path
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import OutputPathError

__all__ = ["atomic_save", "atomic_write", "atomic_write_bytes", "atomic_write_text", "check_writable",
           "clean_stale_temps", "temp_path"]


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh hidden temp name next to ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):   # someone else's process, or a platform that cannot tell: keep its file
        return True
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temp files that a killed writer (SIGKILL, power loss) left next to ``path``; returns them.

    Only files named like ours (``.NAME.tmpPID-...``) whose process is no longer running are removed, so a write in
    progress in another live process is never touched.
    """
    path = Path(path)
    removed = []
    stems = {path.name, path.stem}
    try:
        candidates = list(path.parent.glob(".*.tmp*"))
    except OSError:
        return removed
    for tmp in candidates:
        name, sep, rest = tmp.name[1:].rpartition(".tmp")
        pid = rest.split("-", 1)[0]
        if not sep or name not in stems or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _prepare(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give a file name inside it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    return path


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` to write a temp file, fsync it, then move it onto ``path``; returns ``path``.

    For libraries that only write to a path (safetensors ``save_file``, plotly ``write_image``). The temp file keeps
    ``path``'s suffix last so writers that look at the extension behave; it is removed on any exception.
    """
    path = _prepare(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    with _replace_when_done(tmp, path):
        writer(tmp)
        if not tmp.is_file():
            raise OSError(f"the writer for {path} wrote nothing")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    return path


@contextlib.contextmanager
def _replace_when_done(tmp: Path, path: Path) -> Iterator[None]:
    """Run the body that writes ``tmp``; then move it over ``path``. On any error (Ctrl-C too) ``tmp`` vanishes."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO]:
    """Context manager yielding an open temp file; on a clean exit it replaces ``path``, on any error it vanishes.

    Args:
        path: the target file.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding, newline: as for :func:`open` (text mode only).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', not {mode!r}.")
    path = _prepare(path)
    tmp = temp_path(path)
    kwargs = {} if "b" in mode else {"encoding": encoding, "newline": newline}
    with _replace_when_done(tmp, path), open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def check_writable(path: str | os.PathLike) -> Path:
    """Raise :class:`OutputPathError` unless ``path`` can be written (checked BEFORE any compute).

    The nearest existing folder above ``path`` must be writable, and ``path`` must not be a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"output {path} is a folder; give a file name.")
    folder = path.parent
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {path}: {folder} is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {path}: the folder {folder} is not writable.")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"cannot write {path}: the file is read-only.")
    return path
