"""Progress bars: one switch for all of tv_lens, and no widget warning in Jupyter.

Every long loop in tv_lens shows a tqdm bar (``progress=True`` by default). Turn them all off at once with
``tvl.progress.set_enabled(False)`` (or the environment variable ``TV_LENS_PROGRESS=0`` before import), and back
on with ``set_enabled(True)``; a call's own ``progress=False`` still turns its bar off. In a notebook the bar is a
widget when ``ipywidgets`` is installed and plain text otherwise — never tqdm's "IProgress not found" warning.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

_ENABLED = os.environ.get("TV_LENS_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def set_enabled(enabled: bool) -> None:
    """Show (``True``) or hide (``False``) every tv_lens progress bar from now on.

    Raises:
        InputError: a value that is not a bool.
    """
    global _ENABLED
    if not isinstance(enabled, bool):
        from .errors import InputError

        raise InputError(f"set_enabled takes True or False, not {enabled!r}.")
    _ENABLED = enabled


def enabled() -> bool:
    """Whether tv_lens shows progress bars (see :func:`set_enabled`)."""
    return _ENABLED


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _bar_class() -> Any:
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as bar
    else:
        from tqdm.std import tqdm as bar
    return bar


def tqdm(iterable: Any = None, *args: Any, disable: bool = False, **kwargs: Any) -> Any:
    """``tqdm.tqdm`` that honours :func:`set_enabled` and picks the notebook widget only when it can draw."""
    return _bar_class()(iterable, *args, disable=disable or not _ENABLED, **kwargs)


__all__ = ["enabled", "set_enabled", "tqdm"]
