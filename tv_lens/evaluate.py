"""The paper's evaluation: methods of Table 3, first-token scoring, layer sweeps, seeds, tidy results.

Methods (query modality ``q``, the other modality ``o``):

====================  ==================================================================================
``no_context``        the bare query ``Q:{x}\\nA:``
``majority``          the most common label among the demos ("Random" in Table 3); no model call
``base``              ICL with demos in ``q`` and the query in context
``xbase``             ICL with demos in ``o`` and a ``q`` query in context
``patch``             bare query, the vector from ``q`` demos patched at the final delimiter
``xpatch``            bare query, the vector from ``o`` demos patched (the paper's cross-modal transfer)
``instruction_patch`` bare query, the instruction vector patched
``ensemble_patch``    bare query, the exemplar+instruction ensemble patched
``fv_add``            bare query, a function vector (:func:`tv_lens.heads.function_vector`) ADDED at the final
                      delimiter of layer ``layer`` (``vectors={"fv_add": fv}``); with image queries, a text-ICL
                      function vector is the cross-modal variant
``heads_patch``       bare query, the selected heads' outputs (``hook_z``) replaced at the final delimiter by their
                      mean over clean ICL prompts (``vectors={"heads_patch": means.select(heads)}``); no layer
====================  ==================================================================================

Scoring (DESIGN §4): greedy decoding; the first generated token, whitespace stripped, is correct when it and the
label are non-empty and one is a prefix of the other (case-sensitive unless asked). Exact match compares the whole
answer up to the first newline.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .errors import IncompatibleArgumentsError, TaskError
from .prompts import Prompt, Template, encode, icl, queries, sample_demos
from .vectors import TaskVector

METHODS = ("no_context", "majority", "base", "xbase", "patch", "xpatch", "instruction_patch", "ensemble_patch",
           "fv_add", "heads_patch")
PATCH_METHODS = ("patch", "xpatch", "instruction_patch", "ensemble_patch")


def first_token_correct(prediction: str, label: str, case_sensitive: bool = True) -> bool:
    """The paper's metric on the first generated token (see module docstring)."""
    pred, gold = prediction.strip(), label.strip()
    if not case_sensitive:
        pred, gold = pred.lower(), gold.lower()
    return bool(pred) and bool(gold) and (gold.startswith(pred) or pred.startswith(gold))


def exact_match(answer: str, label: str, case_sensitive: bool = True) -> bool:
    """Whole answer (up to the first newline, stripped) equals the label."""
    pred = answer.strip().split("\n")[0].strip()
    gold = label.strip()
    return pred == gold if case_sensitive else pred.lower() == gold.lower()


@torch.no_grad()
def predict(model, prompts: Sequence[Prompt], fwd_hooks_for_batch=None, max_new_tokens: int = 1,
            batch_size: int = 16, progress: bool = False, desc: str = "predict") -> list[tuple[str, str]]:
    """Greedy answers: ``(first_token_text, answer_text)`` per prompt.

    Args:
        fwd_hooks_for_batch: ``callable(n_rows) -> fwd_hooks`` giving FRESH hooks for each batch (they act on the
            prompt, decoding reuses the KV cache), or ``None``.
    """
    out: list[tuple[str, str]] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = prompts[start:start + batch_size]
        batch = encode(model, chunk)
        hooks = fwd_hooks_for_batch(len(chunk)) if fwd_hooks_for_batch else []
        new = model.generate(batch, max_new_tokens=max_new_tokens, fwd_hooks=hooks, return_new_tokens_only=True)
        for row in new:
            out.append((model.to_string(row[:1]), model.to_string(row)))
    return out


def _majority(prompt: Prompt) -> str:
    counts = Counter(prompt.demo_labels)
    best = max(counts.values())
    return next(label for label in prompt.demo_labels if counts[label] == best)


def _other(modality: str) -> str:
    return "image" if modality == "text" else "text"


def _split(items: Any) -> tuple[list, list | None, str | None]:
    """(queries, demo pool, task name) from a Task (test split, train pool) or a list of items."""
    if hasattr(items, "test") and hasattr(items, "name"):
        pool = list(getattr(items, "train", []) or []) or None
        return list(items.test), pool, items.name
    return list(items), None, None


def _vector_for(method: str, vector, vectors, seed_index: int) -> TaskVector:
    chosen = (vectors or {}).get(method, vector)
    if chosen is None:
        raise IncompatibleArgumentsError(f"Method {method!r} needs a task vector: pass vector= or "
                                         f"vectors={{'{method}': ...}}.")
    if isinstance(chosen, (list, tuple)):
        return chosen[seed_index % len(chosen)]
    return chosen


def _head_object_for(method: str, vector, vectors) -> Any:
    """The function vector (``fv_add``) or selected head means (``heads_patch``) a head method needs."""
    chosen = (vectors or {}).get(method)
    if chosen is None and method == "fv_add" and getattr(vector, "kind", None) == "function_vector":
        chosen = vector
    if method == "fv_add":
        if not isinstance(chosen, TaskVector):
            raise IncompatibleArgumentsError("Method 'fv_add' needs a function vector: vectors={'fv_add': "
                                             "tvl.heads.function_vector(model, means, heads)}.")
        return chosen
    if chosen is None or not hasattr(chosen, "hooks") or getattr(chosen, "heads", None) is None:
        raise IncompatibleArgumentsError("Method 'heads_patch' needs head means with a selection: "
                                         "vectors={'heads_patch': means.select(heads)} (tvl.heads).")
    return chosen


def _layer_for(method: str, layer) -> int:
    value = layer.get(method) if isinstance(layer, dict) else layer
    if value is None:
        raise IncompatibleArgumentsError(f"Method {method!r} needs layer= (e.g. layer_sweep(...).best).")
    return value


@dataclass
class EvalResult:
    """Evaluation results: ``scores`` (one row per task × method × seed) and ``predictions`` (per item)."""

    scores: pd.DataFrame
    predictions: pd.DataFrame

    def table(self, metric: str = "accuracy") -> pd.DataFrame:
        """Methods × tasks (mean over seeds), plus ``Avg`` — the layout of the paper's Table 3."""
        if self.scores.empty:
            raise TaskError("No results to tabulate.")
        pivot = self.scores.pivot_table(index="method", columns="task", values=metric, aggfunc="mean", sort=False)
        pivot["Avg"] = pivot.mean(axis=1)
        order = [m for m in METHODS if m in pivot.index] + [m for m in pivot.index if m not in METHODS]
        return pivot.loc[order]

    @staticmethod
    def concat(results: Sequence[EvalResult]) -> EvalResult:
        """Join results of several tasks or runs."""
        return EvalResult(pd.concat([r.scores for r in results], ignore_index=True),
                          pd.concat([r.predictions for r in results], ignore_index=True))

    def __repr__(self) -> str:
        return f"EvalResult({len(self.scores)} scores)\n{self.table().round(2).to_string()}"

    def _repr_html_(self) -> str:
        return "<b>EvalResult</b> (accuracy, mean over seeds)" + self.table().round(3).to_html()


def evaluate(model, items: Any, methods: Sequence[str] = ("no_context", "base", "patch"), *,
             vector: TaskVector | Sequence[TaskVector] | None = None, vectors: dict | None = None,
             layer: int | dict | None = None, query_modality: str = "text", n_shots: int = 5,
             seeds: Sequence[int] = (0,), pool: Sequence | None = None, task: str | None = None,
             case_sensitive: bool = True, max_new_tokens: int = 6, batch_size: int = 16,
             progress: bool = True, template: Template | str | None = None) -> EvalResult:
    """Run Table-3 methods on test queries.

    Args:
        model: a ``HookedMultimodalModel``.
        items: a ``Task`` (its ``test`` split; demos from ``train``) or a list of items.
        methods: any of :data:`METHODS`.
        vector / vectors: the task vector for patch methods; ``vectors={"xpatch": v, "patch": w}`` per method;
            a list gives one vector per seed. ``fv_add`` takes a function vector, ``heads_patch`` head means with
            a selection (see :mod:`tv_lens.heads`).
        layer: the patch layer (an int, or ``{method: layer}``, e.g. ``{"patch": 15, "fv_add": 9}``).
        query_modality: ``"text"`` or ``"image"``.
        n_shots, seeds, pool: ICL demos (``base``, ``xbase``, ``majority``): ``n_shots`` per prompt, sampled per
            seed from ``pool`` (default: the task's train split, else the other items).
        case_sensitive: the paper is case-sensitive except for its Figure 8.
        max_new_tokens: tokens generated for exact match (first-token accuracy needs 1).
        template: how demos and queries are written (:class:`~tv_lens.prompts.Template` or a name in
            ``tvl.prompts.TEMPLATES``; default ``"qa"``, the paper's ``Q:{x}\\nA:{y}``).

    Returns:
        :class:`EvalResult`; ``result.table()`` is Table 3's layout.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise IncompatibleArgumentsError(f"Unknown method(s) {unknown}; choose from {METHODS}.")
    query_items, task_pool, task_name = _split(items)
    if not query_items:
        raise TaskError("No test items to evaluate.")
    task = task or task_name or "task"
    pool = list(pool) if pool is not None else task_pool
    score_rows, pred_rows = [], []
    for seed_index, seed in enumerate(seeds):
        for method in tqdm(methods, desc=f"{task} seed {seed}", disable=not progress, leave=False):
            demo_modality = query_modality if method == "base" else _other(query_modality)
            if method in ("base", "xbase", "majority"):
                prompts = icl(query_items, n_shots=n_shots, modality=demo_modality if method != "majority"
                              else "text", query_modality=query_modality, pool=pool, seed=seed, template=template)
            else:
                prompts = queries(query_items, modality=query_modality, template=template)
            layer_used = None
            if method == "majority":
                answers = [(_majority(p), _majority(p)) for p in prompts]
            elif method == "fv_add":
                fv = _head_object_for(method, vector, vectors)
                fv.check_compatible(model)
                layer_used = _layer_for(method, layer)
                answers = predict(model, prompts, lambda n: fv.hooks(layer_used, at="delimiter", mode="add"),
                                  max_new_tokens=max_new_tokens, batch_size=batch_size)
            elif method == "heads_patch":
                means = _head_object_for(method, vector, vectors)
                means.check_compatible(model)
                answers = predict(model, prompts, lambda n: means.hooks(at="delimiter"),
                                  max_new_tokens=max_new_tokens, batch_size=batch_size)
            elif method in PATCH_METHODS:
                vec = _vector_for(method, vector, vectors, seed_index)
                vec.check_compatible(model)
                layer_used = _layer_for(method, layer)
                answers = predict(model, prompts, lambda n: vec.hooks(layer_used, at="delimiter"),
                                  max_new_tokens=max_new_tokens, batch_size=batch_size)
            else:
                answers = predict(model, prompts, None, max_new_tokens=max_new_tokens, batch_size=batch_size)
            correct = [first_token_correct(first, p.label, case_sensitive) for (first, _), p in zip(answers, prompts)]
            exact = [exact_match(full, p.label, case_sensitive) for (_, full), p in zip(answers, prompts)]
            score_rows.append({"task": task, "method": method, "query_modality": query_modality, "seed": seed,
                               "layer": layer_used, "accuracy": sum(correct) / len(correct),
                               "exact_match": sum(exact) / len(exact), "n": len(correct)})
            for p, (first, full), ok, em in zip(prompts, answers, correct, exact):
                pred_rows.append({"task": task, "method": method, "seed": seed, "query": p.query_input,
                                  "label": p.label, "first_token": first, "answer": full, "correct": ok,
                                  "exact_match": em})
    return EvalResult(pd.DataFrame(score_rows), pd.DataFrame(pred_rows))


# ---------------------------------------------------------------------------------------------- sweeps
@dataclass
class SweepResult:
    """Accuracy per layer (``scores``: task × seed × layer) and the chosen ``best`` layer."""

    scores: pd.DataFrame
    best: int

    def accuracy_by_layer(self) -> pd.Series:
        """Mean over seeds, then over tasks."""
        per_task = self.scores.groupby(["task", "layer"])["accuracy"].mean()
        return per_task.groupby("layer").mean()

    def __repr__(self) -> str:
        acc = self.accuracy_by_layer()
        return f"SweepResult(best layer {self.best}: {acc.loc[self.best]:.3f}; layers {len(acc)})"

    def _repr_html_(self) -> str:
        acc = self.accuracy_by_layer()
        return (f"<b>SweepResult</b>: best layer <b>{self.best}</b> ({acc.loc[self.best]:.3f})"
                + acc.to_frame("accuracy").T.round(2).to_html())


def best_layer(accuracy_by_layer: pd.Series) -> int:
    """Argmax over layers; ties go to the lowest layer."""
    top = accuracy_by_layer.max()
    return int(min(layer for layer, acc in accuracy_by_layer.items() if acc == top))


@torch.no_grad()
def layer_sweep(model, vector: TaskVector | Sequence[TaskVector] | dict, items: Any,
                query_modality: str = "text", layers: Sequence[int] | None = None, mode: str = "replace",
                case_sensitive: bool = True, max_rows: int = 256, progress: bool = True,
                template: Template | str | None = None) -> SweepResult:
    """Patch the vector at every layer into contextless queries; pick the best layer on these (validation) items.

    Several layers run in ONE forward: the query batch is repeated once per layer and each copy is patched at its
    own layer, so the sweep costs ``ceil(n_items × n_layers / max_rows)`` batched forwards and no per-layer loop.

    Args:
        vector: one vector, a list (one per seed), or ``{task: vector or list}`` with ``items`` a matching dict.
        items: validation items (a ``Task`` → its ``val`` split), or ``{task: items}``.
        layers: layers to try (default: all the vector has).
        mode: ``"replace"`` (paper) or ``"add"``.
        template: how the queries are written (:class:`~tv_lens.prompts.Template` or a name; default ``"qa"``);
            use the one the vector's source prompts were written in.

    Returns:
        :class:`SweepResult` — best layer = argmax of accuracy averaged over seeds then tasks (ties: lowest). Its
        ``seed`` column holds each vector's own ``seed`` when the vectors of a task all have distinct ones, else
        the vector's index in the list.
    """
    per_task = items if isinstance(items, dict) else {getattr(items, "name", "task"): items}
    per_task_vectors = vector if isinstance(vector, dict) else {name: vector for name in per_task}
    rows = []
    for task_name, task_items in per_task.items():
        query_items = list(getattr(task_items, "val", task_items))
        if not query_items:
            raise TaskError(f"Task {task_name!r} has no validation items to sweep on.")
        vecs = per_task_vectors[task_name]
        vecs = list(vecs) if isinstance(vecs, (list, tuple)) else [vecs]
        prompts = queries(query_items, modality=query_modality, template=template)
        own_seeds = [vec.seed for vec in vecs]
        labels = own_seeds if None not in own_seeds and len(set(own_seeds)) == len(vecs) else range(len(vecs))
        for seed_label, vec in zip(labels, vecs):
            vec.check_compatible(model)
            sweep_layers = list(vec.layers) if layers is None else [model.layer_index(l) for l in layers]
            first = _sweep_first_tokens(model, prompts, vec, sweep_layers, mode, max_rows, progress,
                                        desc=f"sweep {task_name}")
            for g, layer in enumerate(sweep_layers):
                for i, p in enumerate(prompts):
                    rows.append({"task": task_name, "seed": seed_label, "layer": layer, "query": p.query_input,
                                 "correct": first_token_correct(first[g][i], p.label, case_sensitive)})
    items_df = pd.DataFrame(rows)
    scores = items_df.groupby(["task", "seed", "layer"], as_index=False)["correct"].mean().rename(
        columns={"correct": "accuracy"})
    result = SweepResult(scores=scores, best=0)
    result.best = best_layer(result.accuracy_by_layer())
    return result


def _sweep_first_tokens(model, prompts: list[Prompt], vec: TaskVector, layers: list[int], mode: str,
                        max_rows: int, progress: bool, desc: str) -> list[list[str]]:
    """First generated token per (layer, prompt) with the vector patched at the final delimiter of each prompt.

    When the delimiter is each prompt's last token (contextless queries) and the family allows it, the clean
    prefix runs ONCE per chunk of prompts and only the last token is re-run, one copy per layer, in one batch.
    Otherwise the chunk is repeated once per layer and each copy is patched at its own layer.
    """
    from .hooks import add, patch

    make = patch if mode == "replace" else add
    first: list[list[str]] = [[""] * len(prompts) for _ in layers]
    per_chunk_prompts = max(1, max_rows // len(layers))
    starts = range(0, len(prompts), per_chunk_prompts)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = prompts[start:start + per_chunk_prompts]
        batch = encode(model, chunk)
        positions = model.positions(batch)
        from .positions import resolve

        delimiter_is_last = bool((resolve("delimiter", positions) == positions.last).all())
        n, g_count = len(chunk), len(layers)
        if delimiter_is_last and model.adapter.prefix_reuse:
            hooks = [(f"blocks.{layer}.hook_resid_post",
                      make(vec[layer], at=-1, rows=torch.arange(n) * g_count + g)) for g, layer in enumerate(layers)]
            ids = model.run_last_token(batch, fwd_hooks=hooks, repeat=g_count).argmax(-1)
            row_of = lambda g, i: i * g_count + g  # noqa: E731
        else:
            repeated = encode(model, chunk * g_count)
            hooks = [(f"blocks.{layer}.hook_resid_post",
                      make(vec[layer], at="delimiter", rows=torch.arange(g * n, (g + 1) * n)))
                     for g, layer in enumerate(layers)]
            ids = model.run_with_hooks(repeated, fwd_hooks=hooks)[:, -1].argmax(-1)
            row_of = lambda g, i: g * n + i  # noqa: E731
        for g in range(g_count):
            for i in range(n):
                first[g][start + i] = model.to_string(ids[row_of(g, i):row_of(g, i) + 1])
    return first


def sample_efficiency(model, vector: TaskVector, items: Any, layer: int, sizes: Sequence[int],
                      instruction_vector: TaskVector | None = None, repeats: int = 3,
                      query_modality: str = "text", case_sensitive: bool = False,
                      batch_size: int = 16) -> pd.DataFrame:
    """Figure 8: accuracy of vectors averaged from ``r`` prompts (and their ensemble with an instruction vector).

    Returns a DataFrame with columns ``r, repeat, method, accuracy`` (``method``: ``exemplar`` or ``ensemble``).
    """
    from .vectors import ensemble

    rows = []
    for r in sizes:
        for rep in range(repeats):
            sub = vector.subsample(r, seed=rep)
            candidates = {"exemplar": sub}
            if instruction_vector is not None:
                candidates["ensemble"] = ensemble([sub, instruction_vector])
            for method, vec in candidates.items():
                res = evaluate(model, items, ["patch"], vector=vec, layer=layer, query_modality=query_modality,
                               case_sensitive=case_sensitive, max_new_tokens=1, batch_size=batch_size,
                               progress=False)
                rows.append({"r": r, "repeat": rep, "method": method,
                             "accuracy": float(res.scores["accuracy"].iloc[0])})
    return pd.DataFrame(rows)


__all__ = ["EvalResult", "METHODS", "SweepResult", "best_layer", "evaluate", "exact_match", "first_token_correct",
           "layer_sweep", "predict", "sample_efficiency", "sample_demos"]
