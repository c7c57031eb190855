"""Every error tv_lens raises on purpose. Each is also a builtin exception type, so ``except ValueError`` works."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TvLensError(Exception):
    """Base class of all tv_lens errors."""


class UnsupportedModelError(TvLensError, ValueError):
    """The model's family has no adapter."""


class HookNameError(TvLensError, KeyError):
    """A hook name that the model does not have."""

    def __init__(self, name: str, known: Iterable[str]):
        known = list(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        self.message = f"No hook point named {name!r}.{hint} `model.hook_names()` lists all {len(known)}."
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class LayerOutOfRangeError(TvLensError, IndexError):
    """A layer index outside ``[0, n_layers)`` (negative indices count from the end)."""


class PositionError(TvLensError, IndexError):
    """A token position that is out of range, unknown, or never occurs in a prompt."""


class TokenNotFoundError(PositionError, AssertionError):
    """``get_token_position``: the token does not occur in the input (an ``AssertionError`` as well, which is what
    TransformerLens raises)."""


class InputError(TvLensError, ValueError):
    """Inputs the model cannot run: image count not matching placeholders, missing ids, wrong shapes."""


class IncompatibleArgumentsError(TvLensError, ValueError):
    """Arguments that contradict each other (e.g. caching a layer past ``stop_at_layer``)."""


class PatchNotFiredError(TvLensError, RuntimeError):
    """A hook that was asked to act never acted: a patch that did not fire is an error, never a silent no-op."""


class VectorError(TvLensError, ValueError):
    """A task vector that does not fit: wrong hidden size, missing layer, corrupt or foreign file."""


class TaskError(TvLensError, ValueError):
    """A task or data set that cannot be used: unknown name, empty split, empty label, malformed file."""


# --- issue 13 ---
class ConcurrentUseError(TvLensError, RuntimeError):
    """A model called from a second thread while it runs in another: hooks, caches and position state live on the
    model, so concurrent runs would mix them. Use one model per thread, or serialise the calls with a lock."""


# --- issue 14 ---
class OutputPathError(TvLensError, OSError):
    """An output location that cannot be written (read-only folder, a folder where a file is needed) or that two
    outputs of one run would share."""


class ProvenanceError(TvLensError, ValueError):
    """Files that do not belong together: shards or vectors of another model, task, split, seed or layer set."""


class UnsafePathError(TaskError):
    """A data file names a path outside its data root (``../..``, absolute, a symlink out); pass
    ``allow_outside_root=True`` to follow it anyway."""


class ImageError(TaskError):
    """An image that cannot be used: unreadable, empty (0×0), or over the size limit
    (``tv_lens.tasks.core.MAX_IMAGE_PIXELS``)."""


class ContextLengthError(InputError):
    """A prompt longer than the model's context window."""


class UsageError(TvLensError, ValueError):
    """A command-line argument or option value that cannot work (checked before any model loads)."""


class ImageLayoutError(InputError):
    """Image tokens that cannot be placed on the picture: a family whose image tokens have no spatial layout
    (Idefics2's perceiver latents), a text-only model, or a processor setting tv_lens does not lay out yet."""
