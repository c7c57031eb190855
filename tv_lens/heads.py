"""Attention heads: mean head outputs, head patches and ablations, causal indirect effects, function vectors.

The head-level view of Todd et al. ("Function Vectors in Large Language Models"), on the per-head hook points
``blocks.{l}.attn.hook_z`` (a head's output before the output projection, ``[batch, pos, head, d_head]``) and
``blocks.{l}.attn.hook_result`` (its contribution to the residual, ``z_h @ W_O[h]``)::

    means = tvl.heads.mean_head_activations(model, icl_prompts)               # clean prompts, last token
    cie = tvl.heads.causal_indirect_effect(model, icl_prompts, means=means)   # shuffled-label prompts
    fv = tvl.heads.function_vector(model, means, cie.top_heads(10))           # a TaskVector, kind="function_vector"
    model.run_with_hooks(query, fwd_hooks=fv.hooks(9, at="last", mode="add"))
    model.run_with_hooks(query, fwd_hooks=tvl.heads.patch_heads(means, cie.top_heads(10), at="last"))

Head hook factories return ``fwd_hooks`` LISTS (one hook per layer involved), so they compose by ``+``; each hook
is a :class:`~tv_lens.hooks.PositionHook`: a position that never occurs raises ``PositionError``, a hook whose layer
never ran raises ``PatchNotFiredError``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .errors import IncompatibleArgumentsError, InputError, LayerOutOfRangeError, TaskError, VectorError
from .hooks import PositionHook
from .progress import tqdm
from .prompts import Prompt, encode, shuffle_labels
from .vectors import TaskVector, _layers, _short

Head = tuple[int, int]


def _name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def _require_heads(model) -> None:
    if not getattr(model, "_head_hooks", False):
        raise IncompatibleArgumentsError(
            f"{model.cfg.family} has no per-head hook points: its adapter names no attention output projection "
            "(Adapter.o_proj) of width n_heads * d_head.")


def _as_heads(heads: Any, n_layers: int | None, n_heads: int | None) -> list[Head]:
    """Validate a list of ``(layer, head)`` pairs (negative layers count from the end; ``None``: unknown model,
    indices must be non-negative)."""
    if heads is None or isinstance(heads, (str, bytes)):
        raise InputError(f"heads must be a list of (layer, head) pairs, got {heads!r}.")
    out: list[Head] = []
    for pair in heads:
        try:
            layer, head = (int(x) for x in pair)
        except (TypeError, ValueError):
            raise InputError(f"heads must be (layer, head) pairs, got {pair!r}.") from None
        if n_layers is None and layer < 0 or n_layers is not None and not -n_layers <= layer < n_layers:
            raise LayerOutOfRangeError(f"Head {pair}: layer {layer} is out of range"
                                       + (f" (0..{n_layers - 1})." if n_layers else "."))
        if head < 0 or n_heads is not None and head >= n_heads:
            raise LayerOutOfRangeError(f"Head {pair}: head {head} is out of range"
                                       + (f" (0..{n_heads - 1})." if n_heads else "."))
        out.append((layer % n_layers if n_layers else layer, head))
    if not out:
        raise InputError("No heads given.")
    return out


# ---------------------------------------------------------------------------------------------- hooks
class HeadPatch(PositionHook):
    """Replace the outputs of ``heads`` of one layer at ``at`` (put it on ``blocks.{l}.attn.hook_z``).

    Args:
        values: ``[k, d_head]`` (one per head, every row), ``[batch, k, d_head]`` (per row), or ``None`` (zeros).
        heads: the ``k`` head indices.
        at: a position spec; a span (``"query"``) gets the same values at every of its positions.
        rows: optional bool mask or indices of the rows to patch.
    """

    def __init__(self, values: Tensor | None, heads: Sequence[int], at: Any = "last",
                 rows: Tensor | None = None, what: str = "patch_heads") -> None:
        super().__init__(at, rows)
        self.heads = torch.as_tensor(list(heads), dtype=torch.long)
        self.values = None if values is None else torch.as_tensor(values).detach()
        self.what = what
        if self.values is not None and (self.values.ndim not in (2, 3) or self.values.shape[-2] != len(self.heads)):
            raise VectorError(f"Head values must be [k={len(self.heads)}, d_head] or [batch, k, d_head], got "
                              f"{tuple(self.values.shape)}.")

    def apply(self, act: Float[Tensor, "batch pos head d_head"], index: Tensor, hook: Any) -> Tensor:
        if act.ndim != 4:
            raise InputError(f"{self.what} acts on blocks.{{l}}.attn.hook_z ([batch, pos, head, d_head]); "
                             f"{getattr(hook, 'name', 'this hook point')} carries {tuple(act.shape)}.")
        heads = self.heads.to(act.device)
        if int(heads.max()) >= act.shape[2]:
            raise LayerOutOfRangeError(f"Head {int(heads.max())} is out of range: this layer has {act.shape[2]}.")
        rows = self._row_selector(act)
        values = (torch.zeros(len(heads), act.shape[-1]) if self.values is None else self.values)
        if values.shape[-1] != act.shape[-1]:
            raise VectorError(f"Head values have width {values.shape[-1]}, this model's d_head is {act.shape[-1]}.")
        values = values.to(device=act.device, dtype=act.dtype)
        if values.ndim == 3:
            if values.shape[0] != act.shape[0]:
                raise VectorError(f"Per-row head values have {values.shape[0]} rows; the batch has {act.shape[0]}.")
            values = values[rows]                                       # [r, k, d_head]
        idx = index.to(act.device)[rows]
        out = act.clone()
        if idx.ndim == 1:
            out[rows[:, None], idx[:, None], heads[None, :]] = values.expand(len(rows), *values.shape[-2:])
        else:
            target = (rows[:, None, None], idx[:, :, None], heads[None, None, :])
            out[target] = values[..., None, :, :].expand(len(rows), idx.shape[1], *values.shape[-2:])
        return out

    def __repr__(self) -> str:
        return f"{self.what}(heads={self.heads.tolist()}, at={self.at!r}, fired={self.fired})"


class _PerRowHeadPatch(PositionHook):
    """Row ``r`` patches head ``row_heads[r]`` (``-1``: none) with ``values[row_heads[r]]`` — one batch patches a
    different head in each copy of a prompt (:func:`causal_indirect_effect`)."""

    def __init__(self, values: Float[Tensor, "head d_head"], row_heads: Tensor, at: Any) -> None:
        super().__init__(at)
        self.values, self.row_heads = values, row_heads

    def apply(self, act: Tensor, index: Tensor, hook: Any) -> Tensor:
        row_heads = self.row_heads.to(act.device)
        rows = torch.nonzero(row_heads >= 0).flatten()
        self._n_rows = int(rows.numel())   # fired = acted on at least one row
        out = act.clone()
        heads = row_heads[rows]
        out[rows, index.to(act.device)[rows], heads] = self.values.to(device=act.device, dtype=act.dtype)[heads]
        return out


def _per_layer(heads: list[Head]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for layer, head in heads:
        grouped.setdefault(layer, [])
        if head not in grouped[layer]:
            grouped[layer].append(head)
    return dict(sorted(grouped.items()))


def patch_heads(values: HeadMeans | Mapping[Head, Tensor], heads: Sequence[Head] | None = None, at: Any = "last",
                rows: Tensor | None = None) -> list[tuple[str, HeadPatch]]:
    """``fwd_hooks`` that REPLACE the outputs (``hook_z``) of ``heads`` at ``at`` with ``values``.

    Args:
        values: a :class:`HeadMeans` (mean outputs), or ``{(layer, head): [d_head] or [batch, d_head]}``.
        heads: ``(layer, head)`` pairs; default: the selection of a ``HeadMeans`` (``means.heads``), or every key
            of the mapping.
        at: a position spec (default ``"last"``: the last token, where Todd et al. patch).
        rows: optional rows to patch.

    Returns:
        ``[(f"blocks.{l}.attn.hook_z", HeadPatch), ...]``, one per layer involved; add lists to compose.
    """
    if isinstance(values, HeadMeans):
        chosen = values.heads if heads is None else heads
        if chosen is None:
            raise InputError("Name the heads to patch (heads=[(layer, head), ...]) or select them first "
                             "(means.select(heads)).")
        chosen = _as_heads(chosen, values.n_model_layers, values.n_heads)
        missing = sorted({layer for layer, _ in chosen} - set(values.layers))
        if missing:
            raise LayerOutOfRangeError(f"These means have no layer {missing}; they have {_short(values.layers)}.")
        lookup = {(layer, head): values[layer, head] for layer, head in chosen}
    elif isinstance(values, Mapping):
        chosen = list(values) if heads is None else list(heads)
        absent = [h for h in chosen if tuple(h) not in values]
        if absent:
            raise InputError(f"No values for head(s) {absent[:3]}.")
        lookup = {tuple(h): torch.as_tensor(values[tuple(h)]) for h in chosen}
    else:
        raise InputError(f"values must be HeadMeans or a {{(layer, head): tensor}} mapping, got "
                         f"{type(values).__name__}.")
    hooks = []
    for layer, layer_heads in _per_layer([tuple(h) for h in lookup]).items():
        stacked = torch.stack([lookup[(layer, h)] for h in layer_heads], dim=-2)
        hooks.append((_name(layer), HeadPatch(stacked, layer_heads, at=at, rows=rows)))
    return hooks


def mean_ablate_heads(means: HeadMeans, heads: Sequence[Head] | None = None, at: Any = "last",
                      rows: Tensor | None = None) -> list[tuple[str, HeadPatch]]:
    """``fwd_hooks`` that replace the outputs of ``heads`` at ``at`` with their mean over a reference set — a patch
    with the means (:func:`patch_heads`), named for what it is used for."""
    hooks = patch_heads(means, heads, at=at, rows=rows)
    for _, hook in hooks:
        hook.what = "mean_ablate_heads"
    return hooks


def zero_ablate_heads(heads: Sequence[Head], at: Any = "last", rows: Tensor | None = None,
                      n_heads: int | None = None) -> list[tuple[str, HeadPatch]]:
    """``fwd_hooks`` that zero the outputs of ``heads`` at ``at``."""
    checked = _as_heads(heads, n_layers=None, n_heads=n_heads)
    return [(_name(layer), HeadPatch(None, layer_heads, at=at, rows=rows, what="zero_ablate_heads"))
            for layer, layer_heads in _per_layer(checked).items()]


# ---------------------------------------------------------------------------------------------- mean outputs
@dataclass
class HeadMeans:
    """Mean ``hook_z`` of every head at one position over a set of prompts, plus an optional head selection.

    Attributes:
        z: ``[n_layers_kept, n_heads, d_head]`` float32 on CPU, row ``i`` for ``layers[i]``.
        layers: the model layers kept.
        heads: the selected ``(layer, head)`` pairs (:meth:`select`), used by :meth:`hooks` and the ``heads_patch``
            method of :func:`tv_lens.evaluate`; ``None``: no selection.
        model_name, family, n_model_layers, n_heads, d_head: the source model.
        position, n_prompts, modality, task: provenance.
    """

    z: Float[Tensor, "layer head d_head"]
    layers: list[int]
    model_name: str
    family: str
    n_model_layers: int
    n_heads: int
    d_head: int
    position: str = "last"
    n_prompts: int = 0
    modality: str | None = "text"
    task: str | None = None
    heads: list[Head] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.z.shape != (len(self.layers), self.n_heads, self.d_head):
            raise VectorError(f"z must be [len(layers)={len(self.layers)}, n_heads={self.n_heads}, "
                              f"d_head={self.d_head}], got {tuple(self.z.shape)}.")

    def __getitem__(self, key: Head | int) -> Tensor:
        """``means[layer, head]`` → ``[d_head]``; ``means[layer]`` → ``[n_heads, d_head]``."""
        layer, head = key if isinstance(key, tuple) else (key, None)
        if layer < 0:
            layer += self.n_model_layers
        if layer not in self.layers:
            raise LayerOutOfRangeError(f"Layer {layer} is not in these means (layers {_short(self.layers)}).")
        row = self.z[self.layers.index(layer)]
        return row if head is None else row[head]

    def select(self, heads: Sequence[Head]) -> HeadMeans:
        """A copy that remembers ``heads`` (what ``hooks()`` and ``evaluate(..., "heads_patch")`` patch)."""
        return replace(self, heads=_as_heads(heads, self.n_model_layers, self.n_heads))

    def hooks(self, heads: Sequence[Head] | None = None, at: Any = "last",
              rows: Tensor | None = None) -> list[tuple[str, HeadPatch]]:
        """``fwd_hooks`` patching ``heads`` (default: the selection) with these means at ``at``."""
        return patch_heads(self, heads, at=at, rows=rows)

    def check_compatible(self, model) -> None:
        """Raise :class:`VectorError` unless ``model`` has these heads (same count and width, enough layers)."""
        if (model.cfg.n_heads, model.cfg.d_head) != (self.n_heads, self.d_head):
            raise VectorError(f"These means have {self.n_heads} heads of width {self.d_head} (from "
                              f"{self.model_name}); {model.cfg.model_name} has {model.cfg.n_heads} × "
                              f"{model.cfg.d_head}.")
        if max(self.layers) >= model.cfg.n_layers:
            raise VectorError(f"These means have layer {max(self.layers)}; the model has {model.cfg.n_layers}.")

    def __repr__(self) -> str:
        chosen = "none" if self.heads is None else f"{len(self.heads)} heads"
        return (f"HeadMeans(task={self.task!r}, model={self.model_name!r}, layers={_short(self.layers)}, "
                f"heads={self.n_heads}×{self.d_head}, position={self.position!r}, n_prompts={self.n_prompts}, "
                f"selected={chosen})")

    def _repr_html_(self) -> str:
        rows = [("task", self.task), ("model", f"{self.model_name} ({self.family})"), ("layers", _short(self.layers)),
                ("heads × d_head", f"{self.n_heads} × {self.d_head}"), ("position", self.position),
                ("prompts", self.n_prompts), ("selected", self.heads)]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in rows)
        return f"<b>HeadMeans</b><table>{body}</table>"


@torch.no_grad()
def mean_head_activations(model, prompts: Sequence[Prompt], position: Any = "last",
                          layers: str | int | Sequence[int] = "all", batch_size: int = 8, task: str | None = None,
                          progress: bool = True) -> HeadMeans:
    """Mean output of every head (``hook_z``) at ``position`` over ``prompts``.

    Args:
        prompts: e.g. clean ICL prompts ``tvl.prompts.icl(task.val, n_shots=5, pool=task.train)``.
        position: one position per row (default ``"last"``, the query's delimiter in an ICL prompt).
        layers: ``"all"``, a layer or a list; the forward stops after the deepest.
    """
    _require_heads(model)
    prompts = list(prompts)
    if not prompts:
        raise TaskError("No prompts to average head outputs over.")
    layer_list = _layers(model, layers)
    names = [_name(layer) for layer in layer_list]
    total = torch.zeros(len(layer_list), model.cfg.n_heads, model.cfg.d_head, dtype=torch.float64)
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="head means", disable=not progress or len(starts) < 2, leave=False):
        batch = encode(model, prompts[start:start + batch_size])
        _, cache = model.run_with_cache(batch, names_filter=names, positions=position,
                                        stop_at_layer=layer_list[-1] + 1)
        stacked = torch.stack([cache[name] for name in names], dim=1)   # [batch, layer, k, head, d_head]
        if stacked.ndim != 5 or stacked.shape[2] != 1:
            raise InputError(f"Position {position!r} selects several tokens per prompt; head means need one.")
        total += stacked[:, :, 0].double().sum(0).cpu()
    return HeadMeans(z=(total / len(prompts)).float(), layers=layer_list, model_name=model.cfg.model_name,
                     family=model.cfg.family, n_model_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads,
                     d_head=model.cfg.d_head, position=str(position), n_prompts=len(prompts),
                     modality=prompts[0].demo_modality, task=task)


# ---------------------------------------------------------------------------------------------- CIE
@dataclass
class CIEResult:
    """Causal indirect effect of each head: the change in probability of the correct first answer token when the
    head's output at the last token of a corrupted prompt is replaced by its mean over clean prompts.

    Attributes:
        per_prompt: ``[n_prompts, n_layers_kept, n_heads]``.
        layers: the layers measured.
        base_prob: ``[n_prompts]``, the probability of the answer on the corrupted prompts, unpatched.
        model_name, task, n_prompts: provenance.
    """

    per_prompt: Float[Tensor, "prompt layer head"]
    layers: list[int]
    base_prob: Float[Tensor, " prompt"]
    model_name: str = ""
    task: str | None = None

    @property
    def effect(self) -> Float[Tensor, "layer head"]:
        """The average indirect effect (mean over prompts), ``[n_layers_kept, n_heads]``."""
        return self.per_prompt.mean(0)

    @property
    def n_prompts(self) -> int:
        return int(self.per_prompt.shape[0])

    def top_heads(self, k: int = 10) -> list[Head]:
        """The ``k`` heads with the largest mean effect, best first."""
        frame = self.to_frame()
        return [(int(r.layer), int(r.head)) for r in frame.head(k).itertuples()]

    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer, head, effect`` (mean), ``std`` over prompts, sorted by effect."""
        mean, std = self.effect, self.per_prompt.std(0) if self.n_prompts > 1 else torch.zeros_like(self.effect)
        rows = [{"layer": layer, "head": h, "effect": float(mean[i, h]), "std": float(std[i, h])}
                for i, layer in enumerate(self.layers) for h in range(mean.shape[1])]
        return pd.DataFrame(rows).sort_values(["effect", "layer", "head"], ascending=[False, True, True],
                                              ignore_index=True)

    def __repr__(self) -> str:
        top = ", ".join(f"{layer}.{h}" for layer, h in self.top_heads(5))
        return (f"CIEResult(task={self.task!r}, layers={_short(self.layers)}, heads={self.per_prompt.shape[2]}, "
                f"n_prompts={self.n_prompts}, base p={float(self.base_prob.mean()):.3f}, top heads {top})")

    def _repr_html_(self) -> str:
        return (f"<b>CIEResult</b> ({self.n_prompts} prompts, unpatched p(answer) = "
                f"{float(self.base_prob.mean()):.3f}); top heads:" + self.to_frame().head(10).round(4).to_html())


def _answer_ids(model, prompts: list[Prompt]) -> Tensor:
    from .lens import first_token

    missing = [p for p in prompts if not p.label]
    if missing:
        raise TaskError(f"The causal indirect effect needs labelled prompts; {missing[0]!r} has none.")
    return torch.tensor([first_token(model, p.label)[0] for p in prompts])


def _answer_prob(logits: Tensor, answer_ids: Tensor) -> Tensor:
    probs = logits.float().softmax(-1)
    return probs.gather(-1, answer_ids.to(probs.device)[:, None])[:, 0].cpu()


@torch.no_grad()
def causal_indirect_effect(model, prompts: Sequence[Prompt], means: HeadMeans | None = None,
                           corrupted: Sequence[Prompt] | None = None, layers: str | int | Sequence[int] = "all",
                           seed: int = 0, batch_size: int = 8, max_rows: int = 128, task: str | None = None,
                           progress: bool = True) -> CIEResult:
    """Todd et al.'s causal indirect effect of every head of ``layers``, batched over heads.

    For each corrupted prompt (by default ``prompts`` with their demo labels shuffled) and each head, the head's
    output at the LAST token is replaced by its mean over the clean ``prompts``, and the probability of the correct
    first answer token is compared with the unpatched run: ``CIE = p(answer | patched) - p(answer)``.

    The heads are batched: every prompt's batch is repeated once per head of a group and copy ``g`` patches head
    ``g``. Where the family allows it, the prompts' prefix runs ONCE and only the last token is re-run, on copies
    of the prefix's KV cache (``model.last_token_runner``; exact, since nothing before the last token changes), so
    a whole model costs one prompt forward plus ``n_layers * n_heads`` one-token rows per prompt; otherwise whole
    prompts are repeated. ``max_rows`` bounds the rows of one forward (memory: one KV cache per row).

    Args:
        prompts: clean, labelled ICL prompts.
        means: mean head outputs at the last token (default: computed from ``prompts``).
        corrupted: the prompts to patch (default: :func:`tv_lens.prompts.shuffle_labels` of ``prompts``).
        layers: the layers whose heads are measured.

    Returns:
        :class:`CIEResult` (``.effect`` is ``[layer, head]``; ``tvl.plot.cie_heatmap(result)`` draws it).
    """
    _require_heads(model)
    prompts = list(prompts)
    if not prompts:
        raise TaskError("No prompts to measure indirect effects on.")
    layer_list = _layers(model, layers)
    if means is None:
        means = mean_head_activations(model, prompts, position="last", layers=layer_list, progress=progress)
    means.check_compatible(model)
    missing = sorted(set(layer_list) - set(means.layers))
    if missing:
        raise LayerOutOfRangeError(f"The head means have no layer {missing}; compute them for {layer_list}.")
    corrupted = shuffle_labels(prompts, seed=seed) if corrupted is None else list(corrupted)
    n_heads = model.cfg.n_heads
    pairs = [(layer, head) for layer in layer_list for head in range(n_heads)]
    effects, base = [], []
    starts = range(0, len(corrupted), batch_size)
    bar = tqdm(total=len(corrupted) * len(pairs), desc="CIE (prompt × head)", disable=not progress, leave=False)
    for start in starts:
        chunk = corrupted[start:start + batch_size]
        answer_ids = _answer_ids(model, chunk)
        batch = encode(model, chunk)
        runner = model.last_token_runner(batch) if model.adapter.prefix_reuse else None
        clean_p = _answer_prob(runner() if runner else model(batch)[:, -1], answer_ids)
        patched = torch.empty(len(chunk), len(pairs))
        group = max(1, max_rows // len(chunk))
        for g0 in range(0, len(pairs), group):
            group_pairs = pairs[g0:g0 + group]
            patched[:, g0:g0 + len(group_pairs)] = _patched_probs(model, chunk, runner, group_pairs, means,
                                                                  answer_ids)
            bar.update(len(chunk) * len(group_pairs))
        effects.append((patched - clean_p[:, None]).view(len(chunk), len(layer_list), n_heads))
        base.append(clean_p)
    bar.close()
    return CIEResult(per_prompt=torch.cat(effects), layers=layer_list, base_prob=torch.cat(base),
                     model_name=model.cfg.model_name, task=task or means.task)


def _patched_probs(model, chunk: list[Prompt], runner, pairs: list[Head], means: HeadMeans,
                   answer_ids: Tensor) -> Tensor:
    """``[n_prompts, len(pairs)]``: p(answer) with pair ``g`` patched at the last token, one copy per pair."""
    n, g_count = len(chunk), len(pairs)
    if runner is not None:
        row_pair = torch.arange(n * g_count) % g_count                 # last-token runner: row b * G + g
        at, run = -1, lambda hooks: runner(hooks, repeat=g_count)  # noqa: E731
    else:
        row_pair = torch.arange(n * g_count) // n                      # repeated batch: row g * n + b
        repeated = encode(model, chunk * g_count)
        at, run = "last", lambda hooks: model.run_with_hooks(repeated, fwd_hooks=hooks)[:, -1]  # noqa: E731
    hooks = []
    for layer in sorted({layer for layer, _ in pairs}):
        head_of_pair = torch.tensor([head if pl == layer else -1 for pl, head in pairs])
        hooks.append((_name(layer), _PerRowHeadPatch(means[layer], head_of_pair[row_pair], at=at)))
    logits = run(hooks)
    row_answer = answer_ids.repeat_interleave(g_count) if runner else answer_ids.repeat(g_count)
    probs = _answer_prob(logits, row_answer)
    return probs.view(n, g_count) if runner else probs.view(g_count, n).T


# ---------------------------------------------------------------------------------------------- function vectors
@torch.no_grad()
def head_results(model, means: HeadMeans, heads: Sequence[Head]) -> Float[Tensor, "k d_model"]:
    """Each head's mean contribution to the residual: ``means[l, h] @ W_O[l, h]`` (= its mean ``hook_result``)."""
    heads = _as_heads(heads, model.cfg.n_layers, model.cfg.n_heads)
    means.check_compatible(model)
    return torch.stack([means[layer, head].to(model.blocks[layer].attn.W_O) @ model.blocks[layer].attn.W_O[head]
                        for layer, head in heads]).float().cpu()


def function_vector(model, means: HeadMeans, heads: Sequence[Head] | CIEResult, k: int = 10,
                    task: str | None = None) -> TaskVector:
    """Todd et al.'s function vector: the sum of the chosen heads' mean outputs projected by their output matrices
    (their mean ``hook_result`` at the last token, no bias).

    Args:
        means: mean head outputs over clean ICL prompts (:func:`mean_head_activations`).
        heads: ``(layer, head)`` pairs, or a :class:`CIEResult` (its ``k`` top heads).

    Returns:
        A :class:`~tv_lens.vectors.TaskVector` of ``kind="function_vector"`` with the SAME vector in one row per
        model layer: a function vector is added to the residual stream (``fv.hooks(layer, at="last",
        mode="add")``), and the layer is a choice — ``layer_sweep(model, fv, task, mode="add")`` picks it. Its
        ``extra["heads"]`` lists the heads. Text-ICL means give a vector that can be added onto image queries too.
    """
    if isinstance(heads, CIEResult):
        heads = heads.top_heads(k)
    heads = _as_heads(heads, model.cfg.n_layers, model.cfg.n_heads)
    vector = head_results(model, means, heads).sum(0)
    n = model.cfg.n_layers
    return TaskVector(vectors=vector.expand(n, -1).clone(), layers=list(range(n)), model_name=model.cfg.model_name,
                      family=model.cfg.family, d_model=model.cfg.d_model, n_model_layers=n, kind="function_vector",
                      modality=means.modality, position=means.position, n_prompts=means.n_prompts,
                      task=task or means.task, extra={"heads": [list(h) for h in heads]})


__all__ = ["CIEResult", "HeadMeans", "HeadPatch", "causal_indirect_effect", "function_vector", "head_results",
           "mean_ablate_heads", "mean_head_activations", "patch_heads", "zero_ablate_heads"]
