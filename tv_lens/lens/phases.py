"""Logit lens: read residual-stream vectors in the vocabulary, through the model's own final norm and unembedding.

Anything of width ``d_model`` can be decoded: a cache entry (``[batch, d_model]`` at one position, or
``[batch, pos, d_model]``), a stack over layers, or a :class:`~tv_lens.vectors.TaskVector` (``[n_layers, d_model]``).
Only the cached positions are decoded; no full sequence is needed.

Two one-call experiments sit on top:

- :func:`lens_over_layers`: one forward, ``hook_resid_post`` of every layer at one (or a few) positions, decoded →
  :class:`LayerLens` (top-k, entropy, probability and rank of each prompt's answer, per layer).
- :func:`phase_curves`: the paper's Figure 3 — per layer, the probability mass on an *input*, a *task* and an
  *answer* token set, mean and spread over prompts → :class:`PhaseCurves`. :func:`top1_distribution` gives
  Figure 4's pies, :func:`decode_vector` Table 2's top-k decodings of a task vector.

Token sets (:func:`token_set`): a member given as an id is used as is. A member given as a string stands for the
FIRST token of that string, tried twice — as written and with one leading space (``"capital"`` → ``"capital"`` and
``" capital"``), both kept as separate members (duplicates dropped). Strings that already start with whitespace are
used as written only. Where a tokenizer gives a leading space a token of its own, that whitespace-only token is
skipped. A string that is several tokens is still counted by its first token, and a :class:`TokenSetWarning` (one
per set and call) lists those strings. Empty sets, empty strings and strings that tokenize to nothing raise
:class:`~tv_lens.errors.InputError`. Probabilities of a set are summed over its distinct members, after a softmax
over the FULL vocabulary; sets are independent, so two sets that share a token both count it.
"""

from __future__ import annotations

import html
import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import InputError, TaskError
from ..progress import tqdm
from ..prompts import Prompt, encode
from ..stats import t_quantile_975
from ..vectors import TaskVector

OUTPUTS = ("logits", "probs", "log_probs")


class TokenSetWarning(UserWarning):
    """A token-set string is several tokens: its first token stands for it."""


# ---------------------------------------------------------------------------------------------- decoding
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


# ---------------------------------------------------------------------------------------------- token sets
@dataclass(frozen=True)
class TokenSet:
    """Distinct token ids whose probabilities are summed, with what they came from.

    Attributes:
        name: the set's name (``"task"``).
        ids: distinct token ids, in the order first met.
        tokens: each id decoded.
        sources: the strings / ids the user gave.
        split: the given strings that are several tokens (counted by their first token).
    """

    name: str
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    sources: tuple[str, ...] = ()
    split: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"TokenSet({self.name!r}, tokens={list(self.tokens)})"


def first_token(model, text: str) -> tuple[int, bool]:
    """``(id, several)``: the first token of ``text`` and whether ``text`` is several tokens.

    A whitespace-only first token (a tokenizer that splits the leading space off) is skipped.
    """
    if not isinstance(text, str) or not text:
        raise InputError(f"A token-set member must be a non-empty string or an id, got {text!r}.")
    tokenizer = model._require_tokenizer()
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise InputError(f"{text!r} tokenizes to nothing; give token ids instead.")
    if text.strip():
        while len(ids) > 1 and not tokenizer.decode([ids[0]]).strip():
            ids = ids[1:]
    return int(ids[0]), len(ids) > 1


def token_set(model, members: Any, name: str = "tokens", space_variants: bool = True,
              warn: bool = True) -> TokenSet:
    """Resolve strings and ids to a :class:`TokenSet` (the rule is in the module docstring).

    Args:
        members: a string, an id, a list of them, or a ``TokenSet`` (returned renamed).
        space_variants: also try each string with a leading space (default, see the rule).
        warn: emit a :class:`TokenSetWarning` listing strings that are several tokens.

    Raises:
        InputError: an empty set, an empty string, a string that tokenizes to nothing, an id out of range.
    """
    if isinstance(members, TokenSet):
        return TokenSet(name, members.ids, members.tokens, members.sources, members.split)
    if isinstance(members, (str, int)) or (isinstance(members, Tensor) and members.ndim == 0):
        members = [members]
    members = list(members.tolist() if isinstance(members, Tensor) else members)
    if not members:
        raise InputError(f"Token set {name!r} is empty; give at least one string or token id.")
    ids: list[int] = []
    split: list[str] = []
    d_vocab = model.cfg.d_vocab
    for member in members:
        if isinstance(member, bool) or not isinstance(member, (int, str)):
            raise InputError(f"Token set {name!r}: members must be strings or ids, got {member!r}.")
        if isinstance(member, int):
            if not 0 <= member < d_vocab:
                raise InputError(f"Token set {name!r}: id {member} is outside the vocabulary [0, {d_vocab}).")
            ids.append(member)
            continue
        variants = [member] if (not space_variants or member[:1].isspace()) else [member, " " + member]
        for variant in variants:
            token_id, several = first_token(model, variant)
            ids.append(token_id)
            if several and member not in split:
                split.append(member)
    distinct = list(dict.fromkeys(ids))
    tokenizer = model._require_tokenizer()
    result = TokenSet(name, tuple(distinct), tuple(tokenizer.decode([i]) for i in distinct),
                      tuple(str(m) for m in members), tuple(split))
    if warn:
        _warn_split(name, [result], stacklevel=3)
    return result


def _warn_split(name: str, sets: Sequence[TokenSet], stacklevel: int = 3) -> None:
    split = list(dict.fromkeys(s for ts in sets for s in ts.split))
    if split:
        shown = ", ".join(repr(s) for s in split[:5]) + (f" and {len(split) - 5} more" if len(split) > 5 else "")
        warnings.warn(f"Token set {name!r}: {len(split)} string(s) are several tokens and count by their first "
                      f"token only: {shown}.", TokenSetWarning, stacklevel=stacklevel)


class PerPrompt:
    """A token set that differs per prompt: ``members(prompt)`` gives its strings / ids (e.g. the label)."""

    def __init__(self, members: Callable[[Prompt], Any], description: str = "per prompt") -> None:
        self.members = members
        self.description = description

    def __call__(self, prompt: Prompt) -> Any:
        return self.members(prompt)

    def __repr__(self) -> str:
        return f"PerPrompt({self.description})"


LABEL = PerPrompt(lambda prompt: prompt.label, "each prompt's label")
"""The answer set of the paper: each prompt's own label (its first token, with and without a leading space)."""


def token_mask(model, spec: Any, prompts: Sequence[Prompt] | None = None, name: str = "tokens",
               space_variants: bool = True, warn: bool = True,
               _stacklevel: int = 3) -> tuple[Bool[Tensor, "rows d_vocab"], list[TokenSet]]:
    """A boolean mask over the vocabulary per prompt (one row, shared, when the set is the same for all).

    ``spec``: strings / ids / a ``TokenSet`` (shared), a callable ``prompt -> members`` such as :data:`LABEL`, or
    one list of members per prompt.
    """
    per_prompt = callable(spec) and not isinstance(spec, TokenSet)
    nested = (isinstance(spec, (list, tuple)) and spec
              and all(isinstance(m, (list, tuple, TokenSet)) for m in spec))
    if per_prompt or nested:
        if prompts is None:
            raise InputError(f"Token set {name!r} differs per prompt; it needs the prompts.")
        if nested and len(spec) != len(prompts):
            raise InputError(f"Token set {name!r} gives {len(spec)} member lists for {len(prompts)} prompts.")
        sets = []
        for index, prompt in enumerate(prompts):
            members = spec(prompt) if per_prompt else spec[index]
            if members is None or (isinstance(members, (list, tuple, str)) and not members):
                raise InputError(f"Token set {name!r} is empty for prompt {index} ({prompt!r}).")
            sets.append(token_set(model, members, name, space_variants, warn=False))
    else:
        sets = [token_set(model, spec, name, space_variants, warn=False)]
    if warn:
        _warn_split(name, sets, stacklevel=_stacklevel)
    mask = torch.zeros(len(sets), model.cfg.d_vocab, dtype=torch.bool)
    for row, ts in enumerate(sets):
        mask[row, list(ts.ids)] = True
    return mask, sets


def default_token_sets(model, task: Any, prompts: Sequence[Prompt] | None = None,
                       position: Any = "last") -> dict[str, Any]:
    """The paper's three sets (§4.1), as it defines them:

    - ``input``: what the delimiter decodes to in EARLY layers, measured per model (:func:`input_token_set`; in
      Idefics2 the token *auf*, which globally stands for the colon). Without ``prompts`` it falls back to the
      delimiter's own token ``":"``.
    - ``task``: the task word (capital, currency, species, baby, color, flavor).
    - ``answer``: each prompt's label (:data:`LABEL`); for prompts without a label (an instruction, appendix A.4)
      the task's whole answer space — the first tokens of all its distinct labels.

    Args:
        task: a ``Task`` or a task name (``"country-capital"``).
        prompts: the prompts the curves will be read from (measures ``input``; decides ``answer``).

    Raises:
        TaskError: the task has no task word.
    """
    if isinstance(task, str):
        from .. import tasks

        task = tasks.load(task)
    word = getattr(task, "task_word", "")
    if not word:
        raise TaskError(f"Task {getattr(task, 'name', task)!r} has no task word; pass token_sets={{'task': [...]}}.")
    prompts = list(prompts) if prompts is not None else None
    if prompts:
        input_set = input_token_set(model, prompts, position=position)
    else:
        input_set = token_set(model, ":", "input", warn=False)
    answer: Any = LABEL
    if prompts and any(p.label is None for p in prompts):
        labels = list(getattr(task, "labels", []) or [])
        if not labels:
            raise TaskError("These prompts have no labels and the task lists none; pass token_sets={'answer': ...}.")
        answer = token_set(model, labels, "answer", warn=False)
    return {"input": input_set, "task": token_set(model, word, "task", warn=False), "answer": answer}


@torch.no_grad()
def input_token_set(model, prompts: Sequence[Prompt], layers: Sequence[int] | None = None, position: Any = "last",
                    coverage: float = 0.5, max_tokens: int = 3, batch_size: int = 16) -> TokenSet:
    """The paper's INPUT set, measured: the tokens ``position`` decodes to (top-1, logit lens) in early layers.

    The paper reads it off its Figure 4 pies (Idefics2's early layers decode the delimiter to *auf*). Here: take the
    top-1 decoding of every prompt at every layer of ``layers`` (default: the first quarter of the model), and keep
    the most frequent tokens until they cover ``coverage`` of those decodings (at most ``max_tokens``).

    Returns:
        A :class:`TokenSet` named ``"input"``; its ``sources`` say how it was measured.
    """
    prompts = list(prompts)
    if not prompts:
        raise TaskError("No prompts to measure the input set on.")
    n_layers = model.cfg.n_layers
    early = list(layers) if layers is not None else list(range(max(1, n_layers // 4)))
    early = [model.layer_index(layer) for layer in early]
    counts: dict[int, int] = {}
    total = 0
    for _, _, resid in _resid_batches(model, prompts, position, sorted(early), batch_size, False, "input set"):
        top1 = logit_lens(model, resid[:, :, 0], output="logits").argmax(-1)   # [b, L]
        for token_id in top1.flatten().tolist():
            counts[token_id] = counts.get(token_id, 0) + 1
            total += 1
    ids: list[int] = []
    covered = 0
    for token_id, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(ids) >= max_tokens or (ids and covered >= coverage * total):
            break
        ids.append(token_id)
        covered += count
    tokenizer = model._require_tokenizer()
    how = f"top-1 at layers {early[0]}..{early[-1]} of {len(prompts)} prompts, {covered}/{total} decodings"
    return TokenSet("input", tuple(ids), tuple(tokenizer.decode([i]) for i in ids), (how,))


# ---------------------------------------------------------------------------------------------- one forward
def _layer_list(model, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.cfg.n_layers))
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise InputError("No layers requested.")
    return sorted({model.layer_index(layer) for layer in layers})


def _chunks(model, inputs: Any, batch_size: int) -> tuple[list[Prompt] | None, list, int]:
    """(prompts or None, batches to run, rows). Prompts and text are split in ``batch_size`` rows; an encoded batch
    runs as is."""
    if isinstance(inputs, Prompt):
        inputs = [inputs]
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise TaskError("No prompts to run the lens on.")
        groups = [list(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
        if all(isinstance(p, Prompt) for p in inputs):
            return list(inputs), groups, len(inputs)
        if all(isinstance(p, str) for p in inputs):
            return None, groups, len(inputs)
        raise InputError("Inputs must be prompts, strings, or one encoded batch.")
    prompts = getattr(inputs, "prompts", None)
    batch = model._as_inputs(inputs)
    return (list(prompts) if prompts else None), [batch], int(batch["input_ids"].shape[0])


def _encode(model, group: Any) -> Any:
    if isinstance(group, list) and group and isinstance(group[0], Prompt):
        return encode(model, group)
    if isinstance(group, list):
        return model.prepare(group)
    return model._as_inputs(group)


def _resid_batches(model, inputs: Any, position: Any, layers: list[int], batch_size: int, progress: bool,
                   desc: str) -> Iterator[tuple[Any, Tensor, Tensor]]:
    """Per batch: ``(batch, positions [b, k], resid [b, n_layers, k, d_model])``, one forward that stops after
    the deepest layer asked for (the final norm and unembedding of the full sequence never run)."""
    from ..positions import resolve

    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    _, groups, n_rows = _chunks(model, inputs, batch_size)
    if position == "all" and len(groups) > 1:  # every position: one batch, so all rows share one padded width
        _, groups, _ = _chunks(model, inputs, n_rows)
    for group in tqdm(groups, desc=desc, disable=not progress or len(groups) < 2, leave=False):
        batch = _encode(model, group)
        seq_len = batch["input_ids"].shape[1]
        spec = list(range(seq_len)) if position == "all" else position
        index = resolve(spec, model.positions(batch))
        index = index[:, None] if index.ndim == 1 else index
        _, cache = model.run_with_cache(batch, names_filter=names, positions=index, stop_at_layer=layers[-1] + 1)
        yield batch, index.cpu(), torch.stack([cache[name] for name in names], dim=1)


# ---------------------------------------------------------------------------------------------- lens over layers
@dataclass
class LayerLens:
    """The logit lens of ``hook_resid_post`` at every layer, for each row and lensed position.

    Attributes:
        layers: model layers, in order.
        top_ids / top_probs: ``[row, layer, pos, k]``.
        entropy: ``[row, layer, pos]`` in nats.
        positions: ``[row, pos]`` token index of each lensed position; ``valid`` is False on padding.
        input_tokens: per row, the token that sits at each lensed position.
        target_ids: ``[row]`` each row's target (first token of its label), or None.
        target_prob / target_rank: ``[row, layer, pos]`` for the target (rank 0 = top-1), or None.
        token_strings: the decoded top-k ids.
    """

    layers: list[int]
    top_ids: Int[Tensor, "row layer pos k"]
    top_probs: Float[Tensor, "row layer pos k"]
    entropy: Float[Tensor, "row layer pos"]
    positions: Int[Tensor, "row pos"]
    valid: Bool[Tensor, "row pos"]
    input_tokens: list[list[str]]
    token_strings: dict[int, str]
    target_ids: Int[Tensor, " row"] | None = None
    target_prob: Float[Tensor, "row layer pos"] | None = None
    target_rank: Int[Tensor, "row layer pos"] | None = None
    model_name: str = ""
    position: str = "last"

    @property
    def n_rows(self) -> int:
        return int(self.top_ids.shape[0])

    def top1(self, row: int = 0) -> list[list[str]]:
        """Top-1 token per ``[layer][pos]`` of one row."""
        return [[self.token_strings[int(i)] for i in layer] for layer in self.top_ids[row, :, :, 0]]

    def to_frame(self, k: int | None = None) -> pd.DataFrame:
        """One row per (row, layer, position): the top-``k`` tokens and probs (``top1``, ``top1_prob``, ...,
        ``top{k}``, ``top{k}_prob``), entropy, target prob and rank.

        Args:
            k: how many of the decoded tokens to show (default: all the lens kept, its ``k=``).

        Raises:
            InputError: ``k`` larger than the lens kept (run the lens with a larger ``k``) or below 1.
        """
        held = int(self.top_ids.shape[-1])
        k = held if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= held:
            raise InputError(f"k={k!r}: this lens kept the top {held} tokens; pass 1..{held}, or run the lens "
                             "with a larger k.")
        records = []
        for r in range(self.n_rows):
            for li, layer in enumerate(self.layers):
                for p in range(self.positions.shape[1]):
                    if not self.valid[r, p]:
                        continue
                    rec = {"row": r, "layer": layer, "position": int(self.positions[r, p]),
                           "input_token": self.input_tokens[r][p]}
                    for rank in range(k):
                        rec[f"top{rank + 1}"] = self.token_strings[int(self.top_ids[r, li, p, rank])]
                        rec[f"top{rank + 1}_prob"] = float(self.top_probs[r, li, p, rank])
                    rec["entropy"] = float(self.entropy[r, li, p])
                    if self.target_prob is not None:
                        rec["target_prob"] = float(self.target_prob[r, li, p])
                        rec["target_rank"] = int(self.target_rank[r, li, p])
                    records.append(rec)
        return pd.DataFrame(records)

    def by_layer(self) -> pd.DataFrame:
        """Per layer, over rows (and valid positions): mean top-1 prob, mean entropy, and with targets the mean
        target prob, mean target rank and how often the target is top-1."""
        valid = self.valid[:, None, :].expand(-1, len(self.layers), -1)
        stats = {"top1_prob": self.top_probs[..., 0], "entropy": self.entropy}
        if self.target_prob is not None:
            stats |= {"target_prob": self.target_prob, "target_rank": self.target_rank.double(),
                      "target_top1": (self.target_rank == 0).double()}
        count = valid.sum(dim=(0, 2)).double()
        frame = pd.DataFrame({name: ((values.double() * valid).sum(dim=(0, 2)) / count).numpy()
                              for name, values in stats.items()}, index=pd.Index(self.layers, name="layer"))
        return frame

    def __repr__(self) -> str:
        return (f"LayerLens({self.model_name!r}, rows={self.n_rows}, layers={len(self.layers)}, "
                f"positions per row={self.positions.shape[1]}, position={self.position!r}, "
                f"targets={'yes' if self.target_ids is not None else 'no'})")


def _label_targets(model, prompts: Sequence[Prompt] | None, targets: Any, n_rows: int) -> Tensor | None:
    if targets is False or (targets is None and (not prompts or any(p.label is None for p in prompts))):
        return None
    if targets is None:
        targets = [p.label for p in prompts]
    if isinstance(targets, (str, int)):
        targets = [targets] * n_rows
    targets = list(targets)
    if len(targets) != n_rows:
        raise InputError(f"{len(targets)} targets for {n_rows} rows.")
    ids = torch.tensor([first_token(model, t)[0] if isinstance(t, str) else int(t) for t in targets])
    if ((ids < 0) | (ids >= model.cfg.d_vocab)).any():
        raise InputError(f"Target ids must lie in [0, {model.cfg.d_vocab}).")
    return ids


@torch.no_grad()
def lens_over_layers(model, inputs: Any, position: Any = "last", layers: Sequence[int] | None = None, k: int = 5,
                     targets: Any = None, batch_size: int = 16, progress: bool = True) -> LayerLens:
    """Logit lens of every layer's ``hook_resid_post`` at ``position``, in one forward per batch.

    Args:
        inputs: prompts (``tvl.prompts.icl(...)``), text, or one encoded batch.
        position: any position spec (``"last"``, ``"delimiter"``, ``-1``, a list) or ``"all"`` (every token, all
            rows in one batch; meant for a heatmap of a few prompts).
        layers: default all.
        k: top-k kept per decoded residual.
        targets: token whose prob and rank are tracked per row: default each prompt's label (first token as
            written); a string / id for all rows, one per row, or ``False`` for none.

    Returns:
        :class:`LayerLens`.
    """
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}.")
    prompts, _, n_rows = _chunks(model, inputs, batch_size)
    layer_list = _layer_list(model, layers)
    target_ids = _label_targets(model, prompts, targets, n_rows)
    tokenizer = model._require_tokenizer()
    parts: dict[str, list] = {key: [] for key in ("ids", "probs", "entropy", "positions", "valid", "t_prob", "t_rank")}
    input_tokens: list[list[str]] = []
    row = 0
    for batch, index, resid in _resid_batches(model, inputs, position, layer_list, batch_size, progress, "lens"):
        n = index.shape[0]
        rows_target = target_ids[row:row + n].to(resid.device) if target_ids is not None else None
        per_layer: dict[str, list] = {key: [] for key in ("ids", "probs", "entropy", "t_prob", "t_rank")}
        for li in range(len(layer_list)):  # one layer at a time: [b, pos, d_vocab] is the largest tensor
            log_probs = logit_lens(model, resid[:, li], output="log_probs")
            values, ids = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)
            per_layer["ids"].append(ids.cpu())
            per_layer["probs"].append(values.exp().cpu())
            per_layer["entropy"].append(_entropy(log_probs).cpu())
            if rows_target is not None:
                expanded = rows_target[:, None].expand(log_probs.shape[:-1])
                per_layer["t_prob"].append(log_probs.gather(-1, expanded[..., None])[..., 0].exp().cpu())
                per_layer["t_rank"].append(_rank(log_probs, expanded).cpu())
        for key, values in per_layer.items():
            if values:
                parts[key].append(torch.stack(values, dim=1))
        parts["positions"].append(index)
        mask = batch.get("attention_mask")
        parts["valid"].append(mask.cpu().gather(1, index).bool() if mask is not None
                              else torch.ones_like(index, dtype=torch.bool))
        input_tokens += [[tokenizer.decode([int(t)]) for t in ids_row]
                         for ids_row in batch["input_ids"].cpu().gather(1, index)]
        row += n
    top_ids = torch.cat(parts["ids"])
    return LayerLens(
        layers=layer_list, top_ids=top_ids, top_probs=torch.cat(parts["probs"]), entropy=torch.cat(parts["entropy"]),
        positions=torch.cat(parts["positions"]), valid=torch.cat(parts["valid"]), input_tokens=input_tokens,
        token_strings={i: tokenizer.decode([i]) for i in top_ids.unique().tolist()}, target_ids=target_ids,
        target_prob=torch.cat(parts["t_prob"]) if parts["t_prob"] else None,
        target_rank=torch.cat(parts["t_rank"]) if parts["t_rank"] else None, model_name=model.cfg.model_name,
        position=str(position))


# ---------------------------------------------------------------------------------------------- phase curves
def find_peak(values: Sequence[float] | Tensor, layers: Sequence[int]) -> tuple[int, float]:
    """``(layer, value)`` of the maximum of a per-layer curve; ties go to the lowest layer."""
    values = (values.detach().double().cpu() if isinstance(values, Tensor)
              else torch.tensor([float(v) for v in values], dtype=torch.float64))
    if values.numel() == 0 or values.numel() != len(layers):
        raise InputError(f"A curve needs one value per layer; got {values.numel()} values for {len(layers)} layers.")
    if torch.isnan(values).all():
        raise InputError("The curve is all NaN; it has no peak.")
    best = int(torch.nan_to_num(values, nan=-math.inf).argmax())  # argmax returns the first maximum
    return int(layers[best]), float(values[best])


def summarize(per_prompt: Float[Tensor, "prompt layer set"], layers: Sequence[int],
              sets: Sequence[str]) -> pd.DataFrame:
    """Tidy per-layer statistics over prompts: ``layer, set, mean, std, sem, ci_low, ci_high, n``.

    ``std`` is the sample standard deviation; the 95% CI is ``mean ± t(0.975, n-1) · std / sqrt(n)`` (NaN for a
    single prompt).
    """
    n = per_prompt.shape[0]
    data = per_prompt.double()
    mean = data.mean(0)
    std = data.std(0, unbiased=True) if n > 1 else torch.full_like(mean, math.nan)
    sem = std / math.sqrt(n)
    half = t_quantile_975(n - 1) * sem
    rows = [{"layer": int(layer), "set": name, "mean": float(mean[li, si]), "std": float(std[li, si]),
             "sem": float(sem[li, si]), "ci_low": float(mean[li, si] - half[li, si]),
             "ci_high": float(mean[li, si] + half[li, si]), "n": n}
            for si, name in enumerate(sets) for li, layer in enumerate(layers)]
    return pd.DataFrame(rows)


@dataclass
class PhaseCurves:
    """Figure 3: per layer, the probability the lensed token gives each token set, over many prompts.

    Attributes:
        frame: tidy statistics, one row per (layer, set): ``mean, std, sem, ci_low, ci_high, n``.
        per_prompt: ``[prompt, layer, set]`` each prompt's probabilities.
        sets: set names, in the order given.
        layers: model layers.
        token_sets: per set, a description of its members (decoded tokens, or "each prompt's label").
        top1_ids: ``[prompt, layer]`` the top-1 decoding (for :func:`top1_distribution`).
        token_strings: the decoded top-1 ids.
    """

    frame: pd.DataFrame
    per_prompt: Float[Tensor, "prompt layer set"]
    sets: list[str]
    layers: list[int]
    token_sets: dict[str, str]
    top1_ids: Int[Tensor, "prompt layer"]
    token_strings: dict[int, str]
    model_name: str = ""
    position: str = "last"
    task: str | None = None

    @property
    def n_prompts(self) -> int:
        return int(self.per_prompt.shape[0])

    def curve(self, name: str) -> pd.Series:
        """The mean curve of one set, indexed by layer."""
        if name not in self.sets:
            raise KeyError(f"No token set {name!r}; this result has {self.sets}.")
        rows = self.frame[self.frame["set"] == name]
        return pd.Series(rows["mean"].to_numpy(), index=rows["layer"].to_numpy(), name=name)

    @property
    def peaks(self) -> pd.DataFrame:
        """Per set: the layer where the mean probability peaks (ties: lowest) and that probability."""
        rows = []
        for name in self.sets:
            curve = self.curve(name)
            layer, prob = find_peak(curve.to_numpy(), list(curve.index))
            rows.append({"set": name, "peak_layer": layer, "peak_prob": prob})
        return pd.DataFrame(rows).set_index("set")

    def order(self) -> list[str]:
        """Set names sorted by peak layer."""
        peaks = self.peaks
        return sorted(self.sets, key=lambda s: (peaks.loc[s, "peak_layer"], self.sets.index(s)))

    def shows_order(self, expected: Sequence[str] = ("input", "task", "answer"), min_peak: float = 0.05) -> bool:
        """Whether the peaks come in ``expected`` order, at strictly increasing layers, and each set's mean
        probability peaks at ``min_peak`` or more (a curve that never rises above noise shows no phase: the order
        of peaks at 0.0006 says nothing)."""
        peaks = self.peaks
        if any(peaks.loc[s, "peak_prob"] < min_peak for s in expected):
            return False
        layers = [peaks.loc[s, "peak_layer"] for s in expected]
        return all(a < b for a, b in zip(layers, layers[1:]))

    def __repr__(self) -> str:
        peaks = ", ".join(f"{s}@{int(r.peak_layer)}={r.peak_prob:.3f}" for s, r in self.peaks.iterrows())
        return (f"PhaseCurves({self.model_name!r}, task={self.task!r}, prompts={self.n_prompts}, "
                f"layers={len(self.layers)}, position={self.position!r}; peaks: {peaks})")

    def _repr_html_(self) -> str:
        sets = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                       for k, v in self.token_sets.items())
        return (f"<b>PhaseCurves</b> {html.escape(self.model_name)}, task {html.escape(str(self.task))}, "
                f"{self.n_prompts} prompts, position {html.escape(self.position)}<table>{sets}</table>"
                + self.peaks.round(4).to_html())


def _describe(spec: Any, sets: list[TokenSet]) -> str:
    if isinstance(spec, PerPrompt):
        return spec.description
    if len(sets) > 1:
        return f"per prompt ({len(sets)} sets)"
    return ", ".join(repr(t) for t in sets[0].tokens)


@torch.no_grad()
def phase_curves(model, prompts: Sequence[Prompt], token_sets: dict[str, Any] | None = None, task: Any = None,
                 position: Any = "last", layers: Sequence[int] | None = None, batch_size: int = 16,
                 space_variants: bool = True, progress: bool = True) -> PhaseCurves:
    """Figure 3: for each layer, the probability mass (softmax over the full vocabulary, after final norm and
    unembedding) on each token set at ``position``, mean and spread over ``prompts``.

    Args:
        prompts: e.g. ``tvl.prompts.icl(task.val + task.test, n_shots=5, pool=task.train)``.
        token_sets: ``{name: members}``; members are strings / ids (shared), :data:`LABEL` or another callable
            ``prompt -> members``, or one list per prompt. Default: :func:`default_token_sets` of ``task`` and these
            prompts (input measured on them; for instruction prompts — appendix A.4 — the answer set is the task's
            label space, since an instruction has no label).
        task: a ``Task`` or task name, for the default sets (and the result's provenance).
        position: where to read (default the last token, i.e. the query's delimiter in ICL prompts).
        space_variants: apply the leading-space rule to strings (module docstring).

    Returns:
        :class:`PhaseCurves` (tidy frame, per-prompt probabilities, peaks, top-1 decodings).

    Raises:
        InputError: no sets, an empty set, a per-prompt set empty for some prompt.
        TaskError: no prompts.
    """
    prompts = [prompts] if isinstance(prompts, Prompt) else list(prompts)
    if not prompts:
        raise TaskError("No prompts for the phase curves.")
    if token_sets is None:
        if task is None:
            raise InputError("Pass token_sets={'input': ..., 'task': ..., 'answer': ...} or task= for the defaults.")
        token_sets = default_token_sets(model, task, prompts, position=position)
    if not token_sets:
        raise InputError("token_sets is empty; give at least one set.")
    masks, described = {}, {}
    for name, spec in token_sets.items():
        mask, sets = token_mask(model, spec, prompts, name, space_variants, _stacklevel=4)
        masks[name] = mask
        described[name] = _describe(spec, sets)
    layer_list = _layer_list(model, layers)
    per_prompt, top1 = [], []
    row = 0
    for _, _, resid in _resid_batches(model, prompts, position, layer_list, batch_size, progress, "phases"):
        if resid.shape[2] != 1:
            raise InputError(f"Position {position!r} selects several tokens per prompt; phase curves need one.")
        probs = logit_lens(model, resid[:, :, 0], output="probs")          # [b, L, V]
        n = probs.shape[0]
        columns = []
        for name in token_sets:
            mask = masks[name]
            mask = (mask if mask.shape[0] == 1 else mask[row:row + n]).to(probs.device, probs.dtype)
            columns.append(torch.einsum("blv,bv->bl", probs, mask.expand(n, -1)))
        per_prompt.append(torch.stack(columns, dim=-1).cpu())
        top1.append(probs.argmax(-1).cpu())
        row += n
    per_prompt_t = torch.cat(per_prompt)
    top1_ids = torch.cat(top1)
    tokenizer = model._require_tokenizer()
    sets = list(token_sets)
    return PhaseCurves(
        frame=summarize(per_prompt_t, layer_list, sets), per_prompt=per_prompt_t, sets=sets, layers=layer_list,
        token_sets=described, top1_ids=top1_ids,
        token_strings={i: tokenizer.decode([i]) for i in top1_ids.unique().tolist()},
        model_name=model.cfg.model_name, position=str(position),
        task=getattr(task, "name", task) if task is not None else None)


def top1_distribution(result: PhaseCurves | LayerLens, layers: Sequence[int] | None = None,
                      top: int = 8) -> pd.DataFrame:
    """Figure 4: how often each token is the top-1 decoding, per layer, over the prompts of a result.

    Args:
        result: :class:`PhaseCurves` or :class:`LayerLens` (its last lensed position, padding excluded).
        layers: default: the peak layer of each set for ``PhaseCurves``, every layer for ``LayerLens``.
        top: keep the ``top`` most frequent tokens per layer; the rest are pooled as ``"(other)"``
            (``token_id`` -1).

    Returns:
        DataFrame ``layer, token, token_id, count, fraction`` (most frequent first within a layer).
    """
    if isinstance(result, PhaseCurves):
        ids = result.top1_ids
        if layers is None:
            layers = sorted(set(int(v) for v in result.peaks["peak_layer"]))
    else:
        ids = result.top_ids[:, :, -1, 0][result.valid[:, -1]]
        layers = result.layers if layers is None else layers
    if ids.numel() == 0:
        raise TaskError("The result has no prompts to count top-1 decodings over.")
    rows = []
    for layer in layers:
        if layer not in result.layers:
            raise InputError(f"Layer {layer} is not in this result (layers {result.layers[0]}..{result.layers[-1]}).")
        column = ids[:, result.layers.index(layer)]
        values, counts = column.unique(return_counts=True)
        order = counts.argsort(descending=True, stable=True)
        kept = order[:top]
        total = int(column.numel())
        for i in kept.tolist():
            rows.append({"layer": layer, "token": result.token_strings[int(values[i])], "token_id": int(values[i]),
                         "count": int(counts[i]), "fraction": int(counts[i]) / total})
        rest = int(counts[order[top:]].sum()) if len(order) > top else 0
        if rest:
            rows.append({"layer": layer, "token": "(other)", "token_id": -1, "count": rest, "fraction": rest / total})
    return pd.DataFrame(rows)


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


__all__ = ["LABEL", "LayerLens", "PerPrompt", "PhaseCurves", "TokenSet", "TokenSetWarning", "TopK",
           "decode_vector", "default_token_sets", "entropy", "find_peak", "first_token", "input_token_set",
           "lens_over_layers",
           "logit_lens", "phase_curves", "summarize", "t_quantile_975", "token_mask", "token_probability",
           "token_rank", "token_set", "top1_distribution", "top_k"]
