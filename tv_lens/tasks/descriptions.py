"""The dense descriptions of the paper's Figure 10 / appendix A.5, as data.

They ship verbatim in ``tv_lens/data/paper_descriptions.json`` (groups ``logo``, ``character``, ``meme``): each is a
``(description, name)`` pair the paper used as a TEXT-ICL demo, written to be analogous to the image it paired with.
The images are not shipped; give each item an ``image`` path of your own to build the image-ICL side.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import TaskError
from .core import TaskItem

DESCRIPTIONS_FILE = Path(__file__).resolve().parent.parent / "data" / "paper_descriptions.json"


def paper_descriptions(group: str | None = None, images: dict[str, str] | None = None) -> dict[str, list[TaskItem]]:
    """``{group: [TaskItem(description, name, image)]}`` from appendix A.5.

    Args:
        group: one group (``"logo"``, ``"character"``, ``"meme"``); default all.
        images: optional ``{name: image path}`` to attach your own images (e.g. ``{"Apple": "apple_logo.png"}``).

    Raises:
        TaskError: an unknown group, or an image given for a name that is not in the data.
    """
    data = json.loads(DESCRIPTIONS_FILE.read_text(encoding="utf-8"))["groups"]
    if group is not None and group not in data:
        raise TaskError(f"No description group {group!r}; the paper's are {sorted(data)}.")
    images = dict(images or {})
    names = {name for pairs in data.values() for _, name in pairs}
    unknown = sorted(set(images) - names)
    if unknown:
        raise TaskError(f"Images given for {unknown}, which are not in the descriptions ({sorted(names)}).")
    chosen = {group: data[group]} if group is not None else data
    return {g: [TaskItem(text, name, images.get(name)) for text, name in pairs] for g, pairs in chosen.items()}


__all__ = ["DESCRIPTIONS_FILE", "paper_descriptions"]
