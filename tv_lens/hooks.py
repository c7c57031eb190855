"""Hook-function factories: small TransformerLens-style hooks that act at named token positions.

Each factory returns a callable ``hook(activation, hook) -> activation | None`` to put in a ``fwd_hooks`` list,
next to any other hook::

    model.run_with_hooks(batch, fwd_hooks=[
        ("blocks.12.hook_resid_post", tvl.hooks.patch(vec[12], at="delimiter")),
        ("blocks.3.hook_attn_out", tvl.hooks.zero_ablate(at="query")),
    ])

Positions (``at=``) are resolved per row of the running batch (see :mod:`tv_lens.positions`). Every hook counts
how often it acted — "fired" means it acted on at least one row (a ``rows=[]`` or all-False mask acts on none, so it
does not count); when the ``model.hooks(...)`` block (or ``run_with_hooks`` / ``generate``) ends and a
position hook never acted, :class:`~tv_lens.errors.PatchNotFiredError` is raised — a patch that did not fire is an
error, never a silent no-op. A position that does not occur in a row raises ``PositionError`` during the forward.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, MutableMapping
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import positions as _positions
from .errors import InputError, PatchNotFiredError, UsageError, VectorError

_CURRENT: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("tv_lens_current_batch", default=None)


@contextmanager
def running(model, inputs) -> Any:
    """Tell position hooks which batch is running (the model does this around each forward).

    Yields the batch's memo; ``generate`` sets ``memo["decoding"] = True`` once the prompt has run, so position
    hooks attached with ``model.hooks(...)`` act on the prompt and stay out of the one-token decoding steps.
    """
    memo: dict = {}
    token = _CURRENT.set((model, inputs, memo))
    try:
        yield memo
    finally:
        _CURRENT.reset(token)


def decoding() -> bool:
    """True during the decoding steps of ``model.generate`` (after the prompt ran)."""
    state = _CURRENT.get()
    return bool(state is not None and state[2].get("decoding"))


def position(at: Any) -> Int[Tensor, " batch *k"]:
    """The token indices of a named position in the batch that is running now — call it INSIDE any hook.

    The same specs as everywhere in tv_lens (``at=``, ``positions=``): ``"delimiter"`` (the query's ``A:``),
    ``"delimiter[-1]"`` (the last demo's), ``"query"`` / ``"query[-1]"``, ``"image[0]"``, ``"last"``, an int, a
    list or a per-row ``LongTensor``. Rows are resolved one by one in padded coordinates, so a left-padded batch
    of prompts of different lengths gets each row's own index::

        def ablate_head_at_delimiter(z, hook):          # z: [batch, pos, head, d_head]
            rows = torch.arange(z.shape[0])
            z[rows, tvl.hooks.position("delimiter"), 3] = 0.0
            return z

        model.run_with_hooks(batch, fwd_hooks=[("blocks.5.attn.hook_z", ablate_head_at_delimiter)])

    Outside a hook, ask the batch: :meth:`tv_lens.prompts.PromptBatch.position`.

    Returns:
        ``LongTensor[batch]`` (one token per row) or ``LongTensor[batch, k]`` (a span: ``"query"``, ``"image[j]"``).

    Raises:
        UsageError: called outside a tv_lens model call (a plain PyTorch hook, or after the forward ended).
        PositionError: a position that does not occur in some row (the message lists the names that do).
    """
    state = _CURRENT.get()
    if state is None:
        raise UsageError("tv_lens.hooks.position() is asked inside a hook while a tv_lens model runs; run the hook "
                         "through model.run_with_hooks / model.hooks / model.generate / model.run_with_cache, or "
                         "outside a forward ask the batch: tvl.prompts.encode(model, prompts).position(spec).")
    model, inputs, memo = state
    if "positions" not in memo:
        memo["positions"] = model.positions(inputs)
    key = at if isinstance(at, (str, int)) else id(at)
    if key not in memo:
        memo[key] = _positions.resolve(at, memo["positions"])
    return memo[key]


def current_index(at: Any, row_mask: Tensor | None = None) -> Int[Tensor, " batch *k"]:
    """The former name of :func:`position` (kept working).

    ``row_mask`` never selected rows; passing one raises ``InputError`` rather than being ignored: index the result
    with your mask instead (``position(at)[row_mask]``).
    """
    if row_mask is not None:
        raise InputError("current_index(row_mask=...) selects nothing: call tv_lens.hooks.position(at) and index "
                         "its result with your mask, position(at)[row_mask].")
    return position(at)


def current_positions() -> _positions.TokenPositions:
    """All positions of the running batch (last token, image spans, named positions per row) — inside a hook.

    Raises:
        UsageError: called outside a tv_lens model call.
    """
    position("last")   # raises outside a forward, and fills the memo
    return _CURRENT.get()[2]["positions"]


class PositionHook:
    """Base class: a hook acting at ``at`` on rows ``rows`` (all by default); counts how often it fired."""

    def __init__(self, at: Any, rows: Tensor | None = None) -> None:
        self.at = at
        self.rows = _as_rows(rows)
        self.fired = 0
        self._n_rows: int | None = None

    def __call__(self, act: Tensor, hook: Any) -> Tensor | None:
        if decoding():  # positions name prompt tokens; a decoding step holds one new token
            return None
        index = current_index(self.at)
        self._n_rows = None
        out = self.apply(act, index, hook)
        if self._n_rows is None or self._n_rows > 0:   # fired = acted on at least one row
            self.fired += 1
        return out

    def _row_selector(self, act: Tensor) -> Tensor:
        """The batch rows this hook acts on (``LongTensor[r]``); range-checked, never wrapped."""
        batch = act.shape[0]
        rows = torch.arange(batch, device=act.device)
        if self.rows is not None:
            sel = self.rows.to(act.device)
            if sel.dtype == torch.bool:
                if sel.shape != (batch,):
                    raise InputError(f"rows mask has shape {tuple(sel.shape)}; the batch has {batch} rows.")
            elif sel.numel() and not (-batch <= int(sel.min()) and int(sel.max()) < batch):
                raise InputError(f"rows {sel.tolist()[:8]} are out of range for a batch of {batch}.")
            rows = rows[sel]
        self._n_rows = int(rows.numel())
        return rows

    def apply(self, act: Tensor, index: Tensor, hook: Any) -> Tensor | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(at={self.at!r}, fired={self.fired})"


def _as_rows(rows: Any) -> Tensor | None:
    """``None`` (all rows), a bool mask ``[batch]`` or row indices ``[r]`` as a tensor; ``[]`` selects none."""
    if rows is None:
        return None
    rows = torch.as_tensor(rows)
    if rows.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if rows.ndim != 1 or not (rows.dtype == torch.bool or not rows.is_floating_point()):
        raise InputError(f"rows must be a 1-d bool mask or int indices, got {rows.dtype} {tuple(rows.shape)}.")
    return rows


def _check_width(vector: Tensor, act: Tensor, what: str) -> None:
    if vector.ndim not in (1, 2, 3):   # 3: [batch, k, d_model], one row of span values per batch row
        raise VectorError(f"{what} must be [d_model], [batch, d_model] or [k, d_model], got shape "
                          f"{tuple(vector.shape)}; index a TaskVector by layer (vec[layer]) for one layer's vector.")
    if vector.shape[-1] != act.shape[-1]:
        raise VectorError(f"{what} has width {vector.shape[-1]} but the activation has {act.shape[-1]} "
                          "(was it taken from another model or another hook point?).")


def _write(act: Tensor, index: Tensor, rows: Tensor, values: Tensor, mode: str) -> Tensor:
    """Return a copy of ``act`` with ``values`` written (or added) at ``(rows, index[rows])``."""
    out = act.clone()
    idx = index.to(act.device)[rows]
    values = values.to(device=act.device, dtype=act.dtype)
    if idx.ndim == 1:
        target = (rows, idx)
        if values.ndim == 2 and values.shape[0] == act.shape[0]:
            values = values[rows]
    else:
        target = (rows[:, None], idx)
    if mode == "replace":
        out[target] = values
    else:
        out[target] = out[target] + values
    return out


class _Write(PositionHook):
    def __init__(self, values: Tensor | None, at: Any, mode: str, scale: float = 1.0,
                 rows: Tensor | None = None, what: str = "vector") -> None:
        super().__init__(at, rows)
        self.values = None if values is None else torch.as_tensor(values).detach()
        self.mode, self.scale, self.what = mode, scale, what

    def apply(self, act: Tensor, index: Tensor, hook: Any) -> Tensor:
        values = torch.zeros(act.shape[-1]) if self.values is None else self.values
        _check_width(values, act, self.what)
        rows = self._row_selector(act)
        try:
            return _write(act, index, rows, values * self.scale, self.mode)
        except RuntimeError as err:   # torch's broadcast error: the vector's rows fit neither the batch nor the span
            raise VectorError(f"{self.what} of shape {tuple(values.shape)} does not fit position {self.at!r} "
                              f"({err}); give [d_model], [batch, d_model] or [k, d_model] for a k-token span."
                              ) from None

    def __repr__(self) -> str:
        shape = None if self.values is None else tuple(self.values.shape)
        return f"{self.what}(at={self.at!r}, mode={self.mode}, values={shape}, fired={self.fired})"


def patch(vector: Float[Tensor, "*rows d_model"], at: Any = "delimiter",
          rows: Tensor | None = None) -> PositionHook:
    """REPLACE the activation at ``at`` with ``vector`` (the paper's task-vector patch).

    Args:
        vector: ``[d_model]`` (same for every row), ``[batch, d_model]`` (one per row), or ``[k, d_model]`` for
            a span position.
        at: a position spec (default: the final delimiter).
        rows: optional bool mask or indices of the rows to patch (others untouched).
    """
    return _Write(vector, at, "replace", rows=rows, what="patch")


def add(vector: Float[Tensor, "*rows d_model"], at: Any = "delimiter", scale: float = 1.0,
        rows: Tensor | None = None) -> PositionHook:
    """ADD ``scale * vector`` at ``at`` (function-vector style steering)."""
    return _Write(vector, at, "add", scale=scale, rows=rows, what="add")


def mean_ablate(means: Float[Tensor, "*k d_model"], at: Any = "delimiter",
                rows: Tensor | None = None) -> PositionHook:
    """Replace the activation at ``at`` with its mean over a reference set (``means``)."""
    return _Write(means, at, "replace", rows=rows, what="mean_ablate")


def zero_ablate(at: Any = "delimiter", rows: Tensor | None = None) -> PositionHook:
    """Set the activation at ``at`` to zero."""
    return _Write(None, at, "replace", rows=rows, what="zero_ablate")


class _Record(PositionHook):
    def __init__(self, store: MutableMapping | list, at: Any, rows: Tensor | None = None) -> None:
        super().__init__(at, rows)
        self.store = store

    def apply(self, act: Tensor, index: Tensor, hook: Any) -> None:
        rows = self._row_selector(act)
        idx = index.to(act.device)[rows]
        taken = act[rows, idx] if idx.ndim == 1 else act[rows[:, None], idx]
        taken = taken.detach().clone()
        if isinstance(self.store, list):
            self.store.append(taken)
        else:
            self.store[hook.name] = taken
        return None


def record(store: MutableMapping | list, at: Any = "last", rows: Tensor | None = None) -> PositionHook:
    """Record the activation at ``at`` into ``store`` (``store[hook.name] = [batch, d]``, or appended to a list)."""
    return _Record(store, at, rows)


def check_fired(hook_fns: list[Callable]) -> None:
    """Raise :class:`PatchNotFiredError` for position hooks that never acted."""
    silent = [fn for fn in hook_fns if isinstance(fn, PositionHook) and fn.fired == 0]
    if silent:
        raise PatchNotFiredError(
            f"{len(silent)} hook(s) never fired: {silent[:3]}. Their hook point did not run (a layer past "
            "stop_at_layer? a decode step only?) or their rows= selected no row — a patch that does not change "
            "anything is an error.")


__all__ = ["PositionHook", "add", "check_fired", "current_index", "current_positions", "mean_ablate", "patch",
           "position", "record", "running", "zero_ablate"]
