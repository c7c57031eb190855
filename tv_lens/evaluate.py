"""The paper's evaluation: methods of Table 3, first-token scoring, layer sweeps, seeds, tidy results.

Methods (query modality ``q``, the other modality ``o``):

====================  ==================================================================================
``no_context``        the bare query ``Q:{x}\\nA:``
``majority``          the most common label among the demos ("Random" in Table 3); no model call
``base``              ICL with demos in ``q`` and the query in context
``xbase``             ICL with demos in ``o`` and a ``q`` query in context
``patch``             bare query, the vector from ``q`` demos patched at the query's delimiter
``xpatch``            bare query, the vector from ``o`` demos patched (the paper's cross-modal transfer)
``instruction_patch`` bare query, the instruction vector patched
``ensemble_patch``    bare query, the exemplar+instruction ensemble patched

Each patch method takes its own vector (``vectors={"patch": ..., "xpatch": ...}``), checked by kind and modality
(:mod:`tv_lens.protocol`); vectors are read at the LAST DEMO's delimiter (``"delimiter[-1]"``) and patched at the
query's (``"query_delimiter"``, alias ``"delimiter"``).
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

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from .errors import IncompatibleArgumentsError, TaskError
from .progress import tqdm
from .protocol import check_vector, demo_pool, format_ci, mean_ci, other_modality, vectors_for_methods
from .prompts import Prompt, Template, encode, icl, queries, sample_demos
from .vectors import TaskVector

# the methods are rows of tv_lens.methods (PATCH_METHODS re-exported); format_ci / mean_ci live in tv_lens.stats
from .methods import CONTEXT_METHODS, METHODS, PATCH_METHODS  # noqa: F401


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
    return other_modality(modality)


def _split(items: Any) -> tuple[list, list | None, str | None]:
    """(queries, demo pool, task name) from a Task (test split, train pool) or a list of items (no pool)."""
    if hasattr(items, "test") and hasattr(items, "name"):
        return list(items.test), list(getattr(items, "train", []) or []), items.name
    return list(items), None, None


def _head_object_for(method: str, vectors: dict | None) -> Any:
    """The function vector (``fv_add``) or selected head means (``heads_patch``) a head method needs."""
    chosen = (vectors or {}).get(method)
    if method == "fv_add":
        if not isinstance(chosen, TaskVector) or chosen.kind != "function_vector":
            raise IncompatibleArgumentsError("Method 'fv_add' needs a function vector: vectors={'fv_add': "
                                             "tvl.heads.function_vector(model, means, heads)}.")
        return chosen
    if chosen is None or not hasattr(chosen, "hooks") or getattr(chosen, "heads", None) is None:
        raise IncompatibleArgumentsError("Method 'heads_patch' needs head means with a selection: "
                                         "vectors={'heads_patch': means.select(heads)} (tvl.heads).")
    return chosen


def _contextless_hooks(method: str, patch_vectors: dict, vectors: dict | None, model, seed_index: int,
                       layer: int | None):
    """``(fwd_hooks_for_batch or None, id of what is patched)`` for a method run on contextless queries."""
    if method == "no_context":
        return None, None
    if method == "fv_add":
        fv = _head_object_for(method, vectors)
        fv.check_compatible(model)
        return (lambda n: fv.hooks(layer, at="delimiter", mode="add")), id(fv)
    if method == "heads_patch":
        means = _head_object_for(method, vectors)
        means.check_compatible(model)
        return (lambda n: means.hooks(at="delimiter")), id(means)
    chosen = patch_vectors[method]
    vec = chosen[seed_index % len(chosen)] if isinstance(chosen, (list, tuple)) else chosen
    return (lambda n: vec.hooks(layer, at="delimiter")), id(vec)


def _layer_for(method: str, layer) -> int:
    value = layer.get(method) if isinstance(layer, dict) else layer
    if value is None:
        raise IncompatibleArgumentsError(f"Method {method!r} needs layer= (e.g. layer_sweep(...).best).")
    return value


def _row_name(method: str, label: str | None) -> str:
    return method if not label else f"{method} [{label}]"


@dataclass
class EvalResult:
    """Evaluation results: ``scores`` (one row per task × method × seed) and ``predictions`` (per item).

    Both carry a ``run`` column (the run's ``label=``, or ``None``), so runs joined with :meth:`concat` — e.g.
    LLM→VLM xPatch beside VLM→VLM xPatch — stay apart in :meth:`table`.
    """

    scores: pd.DataFrame
    predictions: pd.DataFrame

    def _rows(self) -> pd.DataFrame:
        if self.scores.empty:
            raise TaskError("No results to tabulate.")
        labels = self.scores["run"] if "run" in self.scores else [None] * len(self.scores)
        return self.scores.assign(row=[_row_name(m, lab) for m, lab in zip(self.scores["method"], labels)])

    def _order(self, rows: Sequence[str]) -> list[str]:
        rank = {m: i for i, m in enumerate(METHODS)}
        return sorted(rows, key=lambda r: (rank.get(r.split(" [")[0], len(METHODS)), r))

    def table(self, metric: str = "accuracy", ci: bool = False) -> pd.DataFrame:
        """Methods × tasks, mean over seeds, plus ``Avg`` (per seed the mean over tasks, then over seeds) — the
        layout of the paper's Table 3. Rows are methods, ``"method [label]"`` for labelled runs.

        Args:
            metric: ``"accuracy"`` (the paper's first-token score, default) or ``"exact_match"`` (the whole greedy
                answer, up to the first newline, equals the label).
            ci: cells as strings ``"mean ± half-width"`` of the 95% confidence interval over seeds (Student t).

        Raises:
            InputError: a metric the scores do not hold.
        """
        scores = self._rows()
        if metric not in scores.columns or metric in ("task", "method", "run", "seed", "row", "layer", "n"):
            from .errors import InputError

            raise InputError(f"metric must be 'accuracy' (first token) or 'exact_match' (whole answer), not "
                             f"{metric!r}.")
        per_seed = scores.pivot_table(index=["row", "seed"], columns="task", values=metric, aggfunc="mean",
                                      sort=False)
        per_seed["Avg"] = per_seed.mean(axis=1, skipna=False)
        out = {}
        for row in self._order(per_seed.index.get_level_values("row").unique()):
            block = per_seed.xs(row, level="row")
            cells = {}
            for column in block.columns:
                values = block[column].dropna()
                if values.empty:
                    cells[column] = math.nan if not ci else ""
                    continue
                mean, half = mean_ci(values.tolist())
                cells[column] = format_ci(mean, half) if ci else mean
            out[row] = cells
        return pd.DataFrame.from_dict(out, orient="index")[list(per_seed.columns)]

    def spread(self, metric: str = "accuracy") -> pd.DataFrame:
        """Half-widths of the 95% confidence intervals behind :meth:`table` (NaN with one seed)."""
        scores = self._rows()
        per_seed = scores.pivot_table(index=["row", "seed"], columns="task", values=metric, aggfunc="mean",
                                      sort=False)
        per_seed["Avg"] = per_seed.mean(axis=1, skipna=False)
        rows = self._order(per_seed.index.get_level_values("row").unique())
        return pd.DataFrame({row: {c: mean_ci(per_seed.xs(row, level="row")[c].dropna().tolist())[1]
                                   for c in per_seed.columns} for row in rows}).T

    @staticmethod
    def concat(results: Sequence[EvalResult]) -> EvalResult:
        """Join results of several tasks or runs."""
        return EvalResult(pd.concat([r.scores for r in results], ignore_index=True),
                          pd.concat([r.predictions for r in results], ignore_index=True))

    def __repr__(self) -> str:
        return f"EvalResult({len(self.scores)} scores; accuracy, mean ± 95% CI over seeds)\n" \
               f"{self.table(ci=True).to_string()}"

    def _repr_html_(self) -> str:
        return "<b>EvalResult</b> (accuracy, mean ± 95% CI over seeds)" + self.table(ci=True).to_html()


#: The paper averages three seeds; every one-call experiment defaults to them.
DEFAULT_SEEDS = (0, 1, 2)


def evaluate(model, items: Any, methods: Sequence[str] = ("no_context", "base", "patch"), *,
             vector: TaskVector | Sequence[TaskVector] | None = None, vectors: dict | None = None,
             layer: int | dict | None = None, query_modality: str = "text", n_shots: int = 5,
             seeds: Sequence[int] = DEFAULT_SEEDS, pool: Sequence | None = None, task: str | None = None,
             label: str | None = None, case_sensitive: bool = True, max_new_tokens: int = 6,
             batch_size: int = 16, progress: bool = True, template: Template | str | None = None,
             chat: bool = False) -> EvalResult:
    """Run Table-3 methods on test queries.

    Args:
        model: a ``HookedMultimodalModel``.
        items: a ``Task`` (its ``test`` split is scored; demos come from ``train``) or a list of items.
        methods: any of :data:`METHODS`.
        vectors: the vector each patch method patches, ``{"patch": image_vec, "xpatch": text_vec,
            "instruction_patch": inst, "ensemble_patch": ens}``; a list gives one vector per seed. Each is checked
            by kind and modality (:func:`tv_lens.protocol.check_vector`): e.g. ``xpatch`` on image queries needs a
            vector from TEXT demos. ``fv_add`` takes a function vector, ``heads_patch`` head means with a selection
            (see :mod:`tv_lens.heads`).
        vector: shorthand when exactly ONE patch method runs; with several it raises (use ``vectors=``).
        layer: the patch layer (an int, or ``{method: layer}``, e.g. ``{"patch": 15, "fv_add": 9}``).
        query_modality: ``"text"`` or ``"image"``.
        n_shots, seeds, pool: ICL demos (``base``, ``xbase``, ``majority``): ``n_shots`` per prompt, sampled per
            seed from ``pool`` — default the task's train split. Demos never come from the items being scored: a
            bare list of items needs ``pool=``, and a pool overlapping them raises :class:`TaskError`. ``seeds``
            defaults to the paper's three; tables show mean ± 95% CI over them.
        label: a name for this run, kept in a ``run`` column; :meth:`EvalResult.table` shows its rows as
            ``"method [label]"`` so e.g. ``label="LLM→VLM"`` xPatch sits beside the VLM's own in one table.
        case_sensitive: the paper is case-sensitive except for its Figure 8.
        max_new_tokens: tokens generated for exact match (first-token accuracy needs 1).
        template: how demos and queries are written (:class:`~tv_lens.prompts.Template` or a name in
            ``tvl.prompts.TEMPLATES``; default ``"qa"``, the paper's ``Q:{x}\\nA:{y}``).
        chat: render every prompt with the model's chat template (paper Table 6): each demo a user turn
            ``Q:{x}\\nA:`` and an assistant turn ``{y}``, the query a final user turn; patches act at the query
            turn's ``A:`` delimiter.

    Returns:
        :class:`EvalResult`; ``result.table()`` is Table 3's layout.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise IncompatibleArgumentsError(f"Unknown method(s) {unknown}; choose from {METHODS}.")
    other = other_modality(query_modality)
    seeds = list(seeds)
    if not seeds:
        raise IncompatibleArgumentsError("seeds= is empty; the paper uses seeds=(0, 1, 2).")
    query_items, task_pool, task_name = _split(items)
    if not query_items:
        raise TaskError("No test items to evaluate.")
    task = task or task_name or "task"
    pool = list(pool) if pool is not None else task_pool
    head_methods = [m for m in methods if m in ("fv_add", "heads_patch")]
    patch_vectors = vectors_for_methods(methods, vector, {k: v for k, v in (vectors or {}).items()
                                                          if k not in head_methods})
    for method, chosen in patch_vectors.items():
        for vec in (chosen if isinstance(chosen, (list, tuple)) else [chosen]):
            check_vector(method, vec, query_modality)
            vec.check_compatible(model)
    pools = {}
    for method in methods:
        if method in CONTEXT_METHODS:
            demo_modality = {"base": query_modality, "xbase": other, "majority": "text"}[method]
            pools[method] = demo_pool(query_items, pool, demo_modality, n_shots, task)
    score_rows, pred_rows = [], []
    contextless: dict[tuple, list] = {}
    for seed_index, seed in enumerate(seeds):
        for method in tqdm(methods, desc=f"{task} seed {seed}", disable=not progress, leave=False):
            if method in CONTEXT_METHODS:
                demo_modality = {"base": query_modality, "xbase": other, "majority": "text"}[method]
                prompts = icl(query_items, n_shots=n_shots, modality=demo_modality, query_modality=query_modality,
                              pool=pools[method], seed=seed, template=template, chat=chat)
            else:
                prompts = queries(query_items, modality=query_modality, template=template, chat=chat)
            layer_used = None if method in ("no_context", "heads_patch") or method in CONTEXT_METHODS \
                else _layer_for(method, layer)
            if method == "majority":
                answers = [(_majority(p), _majority(p)) for p in prompts]
            elif method in CONTEXT_METHODS:
                answers = predict(model, prompts, None, max_new_tokens=max_new_tokens, batch_size=batch_size)
            else:  # contextless queries: the same for every seed unless the vector changes with the seed
                hooks_for, vec_id = _contextless_hooks(method, patch_vectors, vectors, model, seed_index, layer_used)
                if (method, vec_id) not in contextless:
                    contextless[method, vec_id] = predict(model, prompts, hooks_for, max_new_tokens=max_new_tokens,
                                                          batch_size=batch_size)
                answers = contextless[method, vec_id]
            correct = [first_token_correct(first, p.label, case_sensitive) for (first, _), p in zip(answers, prompts)]
            exact = [exact_match(full, p.label, case_sensitive) for (_, full), p in zip(answers, prompts)]
            score_rows.append({"task": task, "method": method, "run": label, "query_modality": query_modality,
                               "seed": seed, "layer": layer_used, "accuracy": sum(correct) / len(correct),
                               "exact_match": sum(exact) / len(exact), "n": len(correct)})
            for p, (first, full), ok, em in zip(prompts, answers, correct, exact):
                pred_rows.append({"task": task, "method": method, "run": label, "seed": seed,
                                  "query": p.query_input, "demo_modality": p.demo_modality,
                                  "demo_labels": p.demo_labels, "label": p.label, "first_token": first,
                                  "answer": full, "correct": ok, "exact_match": em})
    return EvalResult(pd.DataFrame(score_rows), pd.DataFrame(pred_rows))


# ---------------------------------------------------------------------------------------------- sweeps
@dataclass
class SweepResult:
    """Accuracy per layer (``scores``: task × seed × layer) and the chosen ``best`` layer.

    A first-token sweep can reward a layer where every patched query gives the SAME answer (all ``Europe``, all
    starting with ``S``): it scores the label's share. ``answers`` therefore counts, per task × seed × layer, the
    ``distinct_answers`` (first tokens) and the ``top_share`` of the most common one (``top_answer``);
    :meth:`constant_layers` lists the layers where one answer covers ≥ 90% of the queries, and the repr, the sweep
    plot and ``layer_sweep``'s warning say when the best layer is one of them.
    """

    scores: pd.DataFrame
    best: int
    answers: pd.DataFrame | None = None

    #: A layer whose most common first answer covers at least this share of the queries answers a constant.
    CONSTANT_SHARE = 0.9

    def accuracy_by_layer(self) -> pd.Series:
        """Mean over seeds, then over tasks."""
        per_task = self.scores.groupby(["task", "layer"])["accuracy"].mean()
        return per_task.groupby("layer").mean()

    def answers_by_layer(self) -> pd.DataFrame:
        """Per layer: ``distinct_answers`` (mean over tasks and seeds), ``top_share`` (the largest over tasks and
        seeds) and the ``top_answer`` that has it. Empty without answer counts (a result built from a scores frame
        alone, e.g. read back from a CSV)."""
        if self.answers is None or self.answers.empty:
            return pd.DataFrame(columns=["distinct_answers", "top_share", "top_answer"])
        frame = self.answers.sort_values("top_share", ascending=False)
        grouped = frame.groupby("layer")
        return pd.DataFrame({"distinct_answers": grouped["distinct_answers"].mean(),
                             "top_share": grouped["top_share"].max(), "top_answer": grouped["top_answer"].first()})

    def constant_layers(self, share: float | None = None) -> list[int]:
        """Layers where one first answer covers at least ``share`` (default 0.9) of some task's queries."""
        share = self.CONSTANT_SHARE if share is None else share
        answers = self.answers_by_layer()
        return [int(layer) for layer, row in answers.iterrows() if row["top_share"] >= share]

    @property
    def best_is_constant(self) -> bool:
        """Whether the selected layer answers one label for ≥ 90% of the queries of some task."""
        return self.best in self.constant_layers()

    def constant_note(self) -> str:
        """A sentence saying that the best layer answers a constant, or ``""``."""
        if not self.best_is_constant:
            return ""
        row = self.answers_by_layer().loc[self.best]
        return (f"layer {self.best} answers {row['top_answer']!r} for {row['top_share']:.0%} of the queries: its "
                "accuracy is that label's share, not the task")

    def __repr__(self) -> str:
        acc = self.accuracy_by_layer()
        note = self.constant_note()
        return (f"SweepResult(best layer {self.best}: {acc.loc[self.best]:.3f}; layers {len(acc)}"
                + (f"; WARNING: {note}" if note else "") + ")")

    def _repr_html_(self) -> str:
        acc = self.accuracy_by_layer()
        note = self.constant_note()
        return (f"<b>SweepResult</b>: best layer <b>{self.best}</b> ({acc.loc[self.best]:.3f})"
                + (f"<br><b>Warning</b>: {note}" if note else "")
                + acc.to_frame("accuracy").T.round(2).to_html())


def _answer_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task × seed × layer: ``distinct_answers``, ``top_answer`` and its ``top_share`` of the first tokens."""
    rows = []
    for (task, seed, layer), answers in frame.groupby(["task", "seed", "layer"])["answer"]:
        counts = Counter(str(a).strip() for a in answers)
        top, n_top = counts.most_common(1)[0]
        rows.append({"task": task, "seed": seed, "layer": layer, "distinct_answers": len(counts),
                     "top_answer": top, "top_share": n_top / len(answers)})
    return pd.DataFrame(rows)


def best_layer(accuracy_by_layer: pd.Series) -> int:
    """Argmax over layers; ties go to the lowest layer."""
    top = accuracy_by_layer.max()
    return int(min(layer for layer, acc in accuracy_by_layer.items() if acc == top))


@torch.no_grad()
def layer_sweep(model, vector: TaskVector | Sequence[TaskVector] | dict | Any, items: Any,
                query_modality: str = "text", layers: Sequence[int] | None = None, mode: str = "replace",
                case_sensitive: bool = True, max_rows: int = 256, progress: bool = True,
                template: Template | str | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
                chat: bool = False) -> SweepResult:
    """Patch the vector at every layer into contextless queries; pick the best layer on these (validation) items.

    Several layers run in ONE forward: the query batch is repeated once per layer and each copy is patched at its
    own layer, so the sweep costs ``ceil(n_items × n_layers / max_rows)`` batched forwards and no per-layer loop.

    Args:
        vector: a list of vectors (one per seed, e.g. from :func:`tv_lens.extract_task_vectors`), a callable
            ``seed -> TaskVector`` (called for each of ``seeds``), a single vector (one seed), or ``{task: any of
            these}`` with ``items`` a matching dict.
        items: validation items (a ``Task`` → its ``val`` split), or ``{task: items}``.
        seeds: the paper's three by default; they label a list of vectors (same length) and drive a callable.
            A single vector is one seed: passing ``seeds=`` with several seeds for it raises.
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
        vecs, labels = _seeded_vectors(per_task_vectors[task_name], seeds, task_name)
        prompts = queries(query_items, modality=query_modality, template=template, chat=chat)
        for seed_label, vec in zip(labels, vecs):
            vec.check_compatible(model)
            sweep_layers = list(vec.layers) if layers is None else [model.layer_index(l) for l in layers]
            first = _sweep_first_tokens(model, prompts, vec, sweep_layers, mode, max_rows, progress,
                                        desc=f"sweep {task_name}")
            for g, layer in enumerate(sweep_layers):
                for i, p in enumerate(prompts):
                    rows.append({"task": task_name, "seed": seed_label, "layer": layer, "query": p.query_input,
                                 "answer": first[g][i],
                                 "correct": first_token_correct(first[g][i], p.label, case_sensitive)})
    items_df = pd.DataFrame(rows)
    scores = items_df.groupby(["task", "seed", "layer"], as_index=False)["correct"].mean().rename(
        columns={"correct": "accuracy"})
    result = SweepResult(scores=scores, best=0, answers=_answer_counts(items_df))
    result.best = best_layer(result.accuracy_by_layer())
    if result.best_is_constant:
        warnings.warn(f"layer_sweep: {result.constant_note()}. Check result.answers_by_layer() and compare with "
                      "the majority baseline before trusting this layer.", stacklevel=2)
    return result


def _seeded_vectors(vecs: Any, seeds: Sequence[int], task_name: str) -> tuple[list[TaskVector], list]:
    """``(vectors, seed label of each)`` for one task of a sweep."""
    explicit = seeds is not DEFAULT_SEEDS
    seeds = list(seeds)
    if callable(vecs) and not isinstance(vecs, TaskVector):
        return [vecs(seed) for seed in seeds], seeds
    if isinstance(vecs, TaskVector):
        if explicit and len(seeds) > 1:
            raise IncompatibleArgumentsError(
                f"Task {task_name!r}: one vector is one seed, but seeds={seeds}; pass one vector per seed "
                "(tvl.extract_task_vectors(model, task, seeds=...)) or a callable seed -> vector.")
        return [vecs], [vecs.seed if vecs.seed is not None else 0]
    vecs = list(vecs)
    if explicit and len(seeds) != len(vecs):
        raise IncompatibleArgumentsError(f"Task {task_name!r}: {len(vecs)} vectors but seeds={seeds}; give one "
                                         "vector per seed.")
    own_seeds = [vec.seed for vec in vecs]
    if explicit:
        return vecs, seeds
    return vecs, own_seeds if None not in own_seeds and len(set(own_seeds)) == len(vecs) else list(range(len(vecs)))


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
                      query_modality: str = "image", case_sensitive: bool = False,
                      batch_size: int = 16) -> pd.DataFrame:
    """Figure 8: accuracy of exemplar vectors averaged from ``r`` prompts, their ensemble with the instruction
    vector, and the instruction vector alone, all patched onto contextless ``query_modality`` queries.

    The paper's x-axis is the number of input-output examples behind the vector; ``n_examples`` is
    ``r × n_shots`` (``r`` prompts of ``n_shots`` demos each; ``n_shots`` is recorded at extraction). Accuracy is
    case-insensitive by default, as in the paper's Figure 8 only.

    Args:
        vector: an ICL vector extracted with ``keep_per_prompt=True`` (text demos for the paper's xPatch).
        sizes: the ``r`` values (prompts averaged); each is drawn ``repeats`` times (seeds ``0..repeats-1``).
        instruction_vector: adds the ``ensemble`` (equal-weight mean of the subsample and this) and
            ``instruction`` (this alone; the same at every ``r``) lines.

    Returns:
        DataFrame ``r, n_examples, repeat, method, accuracy`` (``method``: ``exemplar``, ``ensemble``,
        ``instruction``).
    """
    from .vectors import ensemble

    n_shots = vector.extra.get("n_shots")
    exemplar_method = "patch" if vector.modality == query_modality else "xpatch"
    common = dict(layer=layer, query_modality=query_modality, case_sensitive=case_sensitive, max_new_tokens=1,
                  batch_size=batch_size, progress=False, seeds=(0,))

    def accuracy(method: str, vec: TaskVector) -> float:
        res = evaluate(model, items, [method], vectors={method: vec}, **common)
        return float(res.scores["accuracy"].mean())

    alone = accuracy("instruction_patch", instruction_vector) if instruction_vector is not None else None
    rows = []
    for r in sizes:
        n_examples = r * n_shots if n_shots else None
        for rep in range(repeats):
            sub = vector.subsample(r, seed=rep)
            scores = {"exemplar": accuracy(exemplar_method, sub)}
            if instruction_vector is not None:
                scores["ensemble"] = accuracy("ensemble_patch", ensemble([sub, instruction_vector]))
                scores["instruction"] = alone
            for method, acc in scores.items():
                rows.append({"r": r, "n_examples": n_examples, "repeat": rep, "method": method, "accuracy": acc})
    return pd.DataFrame(rows)


def evaluate_conflict(model, items: Any, context_instruction: str, vector: TaskVector, layer: int,
                      query_modality: str = "image", case_sensitive: bool = True, max_new_tokens: int = 6,
                      batch_size: int = 16, template: Template | str | None = None) -> pd.DataFrame:
    """Figure 9, task conflict: an instruction IN CONTEXT (``{context_instruction}\\nQ:{x}\\nA:``, "Instruction
    xBase") against a conflicting task vector patched at the query's delimiter of that same prompt ("+ Instruction
    xPatch").

    Args:
        items: the queries (a ``Task`` → its ``test`` split, or a list of items).
        context_instruction: the task given in the context window.
        vector: the conflicting task to patch (an instruction vector in the paper; any task vector works).
        layer: the patch layer.

    Returns:
        DataFrame, one row per query: ``query, label, xbase_answer, xpatch_answer, xbase_correct,
        xpatch_correct`` (correct = the first-token metric against the item's label, i.e. the PATCHED task's
        answer when the items belong to it).
    """
    from .prompts import instructed_query

    vector.check_compatible(model)
    query_items = list(getattr(items, "test", items))
    if not query_items:
        raise TaskError("No queries for the task-conflict run.")
    prompts = [instructed_query(item, context_instruction, query_modality, template=template) for item in query_items]
    plain = predict(model, prompts, None, max_new_tokens=max_new_tokens, batch_size=batch_size)
    patched = predict(model, prompts, lambda n: vector.hooks(layer, at="delimiter"), max_new_tokens=max_new_tokens,
                      batch_size=batch_size)
    return pd.DataFrame([{"query": p.query_input, "label": p.label, "xbase_answer": a_full, "xpatch_answer": b_full,
                          "xbase_correct": first_token_correct(a_first, p.label, case_sensitive),
                          "xpatch_correct": first_token_correct(b_first, p.label, case_sensitive)}
                         for p, (a_first, a_full), (b_first, b_full) in zip(prompts, plain, patched)])


__all__ = ["EvalResult", "METHODS", "SweepResult", "best_layer", "evaluate", "evaluate_conflict", "exact_match",
           "first_token_correct",
           "layer_sweep", "predict", "sample_efficiency", "sample_demos"]
