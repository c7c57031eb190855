"""Decoding: residual-stream vectors read in the vocabulary, through the model's own final norm and unembedding
(:func:`logit_lens`, :func:`top_k`, :func:`token_probability`, :func:`entropy`, :func:`token_rank`), and Table 2's
top-k decodings of a task vector (:func:`decode_vector`).

Anything of width ``d_model`` can be decoded: a cache entry (``[batch, d_model]`` at one position, or
``[batch, pos, d_model]``), a stack over layers, or a :class:`~tv_lens.vectors.TaskVector` (``[n_layers, d_model]``).
Token sets follow the rule of :mod:`tv_lens.lens.tokens`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import InputError
from ..vectors import TaskVector
from .tokens import first_token, token_set

OUTPUTS = ("logits", "probs", "log_probs")


def _as_resid(resid: Tensor | TaskVector) -> Tensor:
    if isinstance(resid, TaskVector):
        return resid.vectors
    if not isinstance(resid, Tensor):
        raise InputError(f"Expected a residual tensor [..., d_model] or a TaskVector, got {type(resid).__name__}.")
    if resid.ndim == 0:
        raise InputError("A residual needs a last dimension of size d_model; got a scalar.")
    return resid


def logit_lens(model, resid: Tensor | TaskVector, output: str = "logits",
               normalize: bool = True) -> Float[Tensor, "... d_vocab"]:
    """Decode residuals: final norm (unless ``normalize=False``) → unembedding, in float32. Differentiable (the
    other readouts run without gradients).

    Args:
        model: a ``HookedMultimodalModel``.
        resid: ``[..., d_model]`` (any leading shape), or a ``TaskVector`` (→ ``[n_layers, d_vocab]``).
        output: ``"logits"``, ``"probs"`` (softmax over the full vocabulary) or ``"log_probs"``.

    Raises:
        VectorError: ``resid`` is not ``d_model`` wide.
    """
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {OUTPUTS}, not {output!r}.")
    logits = model.unembed(_as_resid(resid), normalize=normalize).float()
    if output == "probs":
        return logits.softmax(-1)
    if output == "log_probs":
        return logits.log_softmax(-1)
    return logits


@dataclass
class TopK:
    """The ``k`` most likely tokens of each decoded residual (leading shape of the input kept).

    Attributes:
        ids: ``[..., k]`` token ids, most likely first.
        probs: ``[..., k]`` their probabilities (softmax over the full vocabulary).
        tokens: the ids decoded, as nested lists of the same shape.
    """

    ids: Int[Tensor, "... k"]
    probs: Float[Tensor, "... k"]
    tokens: list

    def to_frame(self, dims: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per decoded residual and rank; ``dims`` names the leading dimensions (default ``d0, d1...``)."""
        lead = self.ids.shape[:-1]
        dims = list(dims) if dims is not None else [f"d{i}" for i in range(len(lead))]
        if len(dims) != len(lead):
            raise InputError(f"dims names {len(dims)} dimensions; the result has {len(lead)} leading ones.")
        flat_ids, flat_probs = self.ids.reshape(-1, self.ids.shape[-1]), self.probs.reshape(-1, self.ids.shape[-1])
        rows = []
        for flat, index in enumerate(_indices(lead)):
            for rank in range(flat_ids.shape[1]):
                token_id = int(flat_ids[flat, rank])
                rows.append({**dict(zip(dims, index)), "rank": rank, "token": _nested(self.tokens, index)[rank],
                             "token_id": token_id, "prob": float(flat_probs[flat, rank])})
        return pd.DataFrame(rows)


def _indices(shape: Sequence[int]) -> list[tuple[int, ...]]:
    return list(itertools.product(*[range(n) for n in shape]))


def _nested(values: list, index: tuple[int, ...]) -> Any:
    for i in index:
        values = values[i]
    return values


def _decode_ids(model, ids: Tensor) -> list:
    """Nested lists of decoded tokens, same shape as ``ids`` (each distinct id decoded once)."""
    tokenizer = model._require_tokenizer()
    flat = ids.reshape(-1).tolist()
    table = {i: tokenizer.decode([i]) for i in set(flat)}
    return _reshape([table[i] for i in flat], list(ids.shape))


def _reshape(flat: list, shape: list[int]) -> list:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0]
    return [_reshape(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


@torch.no_grad()
def top_k(model, resid: Tensor | TaskVector, k: int = 5, normalize: bool = True) -> TopK:
    """The ``k`` most likely tokens of every residual in ``resid`` (``[..., d_model]``; batch, layer and position
    dimensions are all just leading dimensions). ``TopK.to_frame(dims=("layer", "batch"))`` tabulates them."""
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}.")
    probs = logit_lens(model, resid, output="probs", normalize=normalize)
    values, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return TopK(ids=ids, probs=values, tokens=_decode_ids(model, ids))


@torch.no_grad()
def token_probability(model, resid: Tensor | TaskVector, tokens: Any,
                      space_variants: bool = True) -> Float[Tensor, "..."]:
    """Probability mass on a token set (see the module docstring's rule), per residual: ``[...]``.

    ``tokens``: strings and/or ids, a :class:`TokenSet`, or a boolean mask broadcastable to ``[..., d_vocab]``
    (e.g. a different set per batch row, from :func:`token_mask`).
    """
    probs = logit_lens(model, resid, output="probs")
    if isinstance(tokens, Tensor) and tokens.dtype == torch.bool:
        if tokens.shape[-1] != probs.shape[-1]:
            raise InputError(f"A token mask must be {probs.shape[-1]} wide (d_vocab), got {tokens.shape[-1]}.")
        return (probs * tokens.to(probs.device)).sum(-1)
    ids = token_set(model, tokens, space_variants=space_variants, warn=True).ids
    return probs[..., list(ids)].sum(-1)


@torch.no_grad()
def entropy(model, resid: Tensor | TaskVector) -> Float[Tensor, "..."]:
    """Entropy (nats) of the decoded next-token distribution, per residual."""
    return _entropy(logit_lens(model, resid, output="log_probs"))


def _entropy(log_probs: Tensor) -> Tensor:
    return -(log_probs.exp() * log_probs).nan_to_num(0.0).sum(-1)


@torch.no_grad()
def token_rank(model, resid: Tensor | TaskVector, target: int | str | Tensor) -> Int[Tensor, "..."]:
    """Rank of ``target`` in each decoded distribution: 0 = top-1 (tokens with a strictly higher logit are counted).

    ``target``: an id, a string (its first token, as written), or a ``LongTensor`` of ids broadcastable to the
    leading shape of ``resid`` (one target per row).
    """
    logits = logit_lens(model, resid)
    return _rank(logits, _target_ids(model, target, logits))


def _target_ids(model, target: int | str | Tensor, logits: Tensor) -> Tensor:
    if isinstance(target, str):
        target = first_token(model, target)[0]
    target = torch.as_tensor(target, dtype=torch.long, device=logits.device)
    if ((target < 0) | (target >= logits.shape[-1])).any():
        raise InputError(f"Target ids must lie in [0, {logits.shape[-1]}).")
    return target.expand(logits.shape[:-1])


def _rank(logits: Tensor, target: Tensor) -> Tensor:
    chosen = logits.gather(-1, target.unsqueeze(-1))
    return (logits > chosen).sum(-1)


def decode_vector(model, vector: TaskVector | Tensor, layer: int | None = None, k: int = 5) -> pd.DataFrame:
    """Table 2: the top-``k`` decodings of a task vector (final norm → unembedding → softmax).

    Args:
        vector: a ``TaskVector`` (``layer`` picks its row; ``None``: every layer it has) or a ``[d_model]`` tensor.

    Returns:
        DataFrame ``layer, rank, token, token_id, prob``.
    """
    if isinstance(vector, TaskVector):
        vector.check_compatible(model)
        layers = list(vector.layers) if layer is None else [model.layer_index(layer)]
        resid = torch.stack([vector[layer_] for layer_ in layers])
    else:
        resid = _as_resid(vector)
        if resid.ndim != 1:
            raise InputError("decode_vector takes a TaskVector or one [d_model] vector; use top_k for stacks.")
        layers, resid = [layer], resid[None]
    frame = top_k(model, resid, k).to_frame(dims=["layer"])
    frame["layer"] = [layers[i] for i in frame["layer"]]
    return frame


__all__ = ["OUTPUTS", "TopK", "decode_vector", "entropy", "logit_lens", "token_probability", "token_rank", "top_k"]
