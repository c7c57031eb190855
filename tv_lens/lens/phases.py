"""Phase curves: the paper's Figure 3 — per layer, the probability mass on an *input*, a *task* and an *answer* token
set, mean and spread over prompts → :class:`PhaseCurves`; the paper's three sets (:func:`default_token_sets`, the
input set measured by :func:`input_token_set`); Figure 4's pies (:func:`top1_distribution`). Token sets follow the
rule of :mod:`tv_lens.lens.tokens`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import InputError, TaskError
from ..prompts import Prompt
from ..stats import t_quantile_975
from .decode import logit_lens
from .forward import _layer_list, _resid_batches
from .layers import LayerLens
from .tokens import LABEL, PerPrompt, TokenSet, token_mask, token_set


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


__all__ = ["PhaseCurves", "default_token_sets", "find_peak", "input_token_set", "phase_curves", "summarize",
           "top1_distribution"]
