"""Hooked eager attention: ``blocks.{l}.attn.hook_attn_scores`` and a writable ``blocks.{l}.attn.hook_pattern``,
served through transformers' own extension point (``AttentionInterface``), without rewriting any decoder module.

tv_lens registers one attention function, :data:`IMPLEMENTATION` (``"tv_lens_eager"``), that computes what HF's eager
attention computes (scores = q·kᵀ · scaling [→ soft-cap] + additive mask → softmax in float32 → dropout → @ V) and
passes the scores and the pattern through the layer's hook points. A model switches its text config's
``_attn_implementation`` from ``"eager"`` to it only while a hook function is attached to one of those two points,
and back when the last one goes: with no such hook the forward pass is HF's own eager attention, bit for bit.

An attention module that does not dispatch through ``AttentionInterface`` never calls the function; the bridge sees
that after the module ran and raises :class:`~tv_lens.errors.UnsupportedModelError` (never a hook that silently
does not fire).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

IMPLEMENTATION = "tv_lens_eager"

# attention module -> (scores hook point, pattern hook point, per-call record {"called": bool})
_HOOKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# id(text config) -> ids of its attention modules now on the hooked implementation
_USERS: dict[int, set[int]] = {}


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """``[batch, kv_head, pos, d]`` → ``[batch, kv_head * n_rep, pos, d]`` (grouped-query attention)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def hooked_eager_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                           attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                           softcap: float | None = None, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """HF's eager attention with hook points on the scores and the pattern.

    Args:
        query: ``[batch, head, q_pos, d_head]``; key/value: ``[batch, kv_head, k_pos, d_head]``.
        attention_mask: additive ``[batch, 1, q_pos, k_pos]`` (0 where allowed, the dtype's minimum where masked;
            ``hook_attn_scores`` shows masked keys as ``-inf``, as TransformerLens does).
    Returns:
        ``(z [batch, q_pos, head, d_head], pattern [batch, head, q_pos, k_pos])``.
    """
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        from ..errors import UnsupportedModelError

        raise UnsupportedModelError("hook_attn_scores / a written hook_pattern: this attention adds attention "
                                    "sinks, which tv_lens's hooked eager attention does not compute.")
    scores_point, pattern_point, record = _HOOKED.get(module, (None, None, None))
    if record is not None:
        record["called"] = True
    n_rep = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    if scores_point is not None:
        scores = _through_scores_point(scores_point, scores)
    pattern = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if pattern_point is not None:
        pattern = pattern_point(pattern)
    pattern_used = nn.functional.dropout(pattern, p=dropout, training=module.training)
    z = torch.matmul(pattern_used, value).transpose(1, 2).contiguous()
    return z, pattern


def _through_scores_point(point: nn.Module, scores: Tensor) -> Tensor:
    """Pass the scores through ``hook_attn_scores`` as TransformerLens shows them: masked keys are ``-inf`` (HF's
    additive mask holds the dtype's minimum). A hook that returns its input leaves HF's scores untouched (exact
    numbers); a returned tensor's ``-inf`` go back to the dtype's minimum, so a fully masked row (padding) keeps
    HF's uniform pattern instead of NaN."""
    low = torch.finfo(scores.dtype).min
    view = scores.masked_fill(scores <= low / 2, float("-inf"))
    new = point(view)
    if new is view:
        return scores
    return new.masked_fill(new == float("-inf"), low)


def register() -> None:
    """Register :data:`IMPLEMENTATION` with transformers (attention function, and HF's eager mask for it)."""
    if IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(IMPLEMENTATION, hooked_eager_attention)
        AttentionMaskInterface.register(IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


class _Switch:
    """A handle (``.remove()``) that keeps one attention module on the hooked implementation; the text config goes
    back to ``"eager"`` when the last module of that config is released."""

    def __init__(self, module: nn.Module, config: Any, points: tuple) -> None:
        register()
        self.module, self.config = module, config
        _USERS.setdefault(id(config), set()).add(id(module))
        _HOOKED[module] = (*points, {"called": False})
        config._attn_implementation = IMPLEMENTATION

    def remove(self) -> None:
        _HOOKED.pop(self.module, None)
        users = _USERS.get(id(self.config), set())
        users.discard(id(self.module))
        if not users:
            _USERS.pop(id(self.config), None)
        if not users and self.config._attn_implementation == IMPLEMENTATION:
            self.config._attn_implementation = "eager"


def record_of(module: nn.Module) -> dict | None:
    """The per-call record of a hooked module (``{"called": bool}``), or None."""
    entry = _HOOKED.get(module)
    return None if entry is None else entry[2]
