"""The main job: the paper's Table-3 protocol on the offline reference VLM (real SmolLM2-135M + trained vision side).

Two suites, both on image queries: the paper's six tasks, and the reference suite (tasks chosen because SmolLM2 can
do them from five text demos, see :mod:`tv_lens.reference.choose_tasks`). For each suite and each demo seed: text-
and image-ICL vectors from the validation split; the patch layer of each method chosen on validation (first-token
sweep over every layer, then exact match of the generated answer on the best few); then no_context, majority
("Random"), image-ICL base and patch, text-ICL xbase and xpatch on the test split. Every cell is a mean over seeds
and items with a 95% bootstrap CI; the paired differences xPatch − xBase and Patch − Base come with their own CI.
Then Figure 3's phase curves and an HTML report (:mod:`tv_lens.report`).

    tv-lens demo                 # full protocol (val 30 / test ≤ 100 items per task, seeds 0, 1, 2)
    tv-lens demo --quick         # smaller: val 8 / test 12, seeds 0, 1, 2, two candidate layers
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .evaluate import EvalResult, SweepResult, evaluate, layer_sweep
from .lens import phase_curves
from .model import HookedMultimodalModel
from .prompts import icl
from .tasks import PAPER_TASKS, list_tasks, load
from .vectors import extract_task_vector

#: Tokens generated per answer in the demo (exact match needs the whole label).
MAX_NEW_TOKENS = 8
SEEDS = (0, 1, 2)
#: Layers (best by first-token accuracy on val) re-scored by exact match before the final choice.
EXACT_MATCH_CANDIDATES = 4
N_BOOTSTRAP = 2000

METHODS = ("majority", "no_context", "base", "xbase", "patch", "xpatch")
ROW_NAMES = {
    "majority": "Random (majority label)",
    "no_context": "No Context",
    "base": "Image ICL Base",
    "patch": "Image ICL Patch",
    "xbase": "Text ICL xBase",
    "xpatch": "Text ICL xPatch",
}
PAIRS = (("xpatch", "xbase"), ("patch", "base"), ("xpatch", "no_context"), ("xpatch", "majority"))


def reference_tasks() -> list[str]:
    """The reference suite: every shipped task that is not one of the paper's six."""
    return [name for name in list_tasks() if name not in PAPER_TASKS]


def suites() -> dict[str, list[str]]:
    """``{"paper": the paper's six, "reference": the tasks chosen for SmolLM2}``."""
    return {"paper": list(PAPER_TASKS), "reference": reference_tasks()}


def load_model(device: str | None = None, dtype: str | torch.dtype | None = None) -> HookedMultimodalModel:
    """The reference VLM, hooked (float32 on the CPU unless ``device`` / ``dtype`` say otherwise).

    Raises:
        InputError: ``dtype`` names no torch floating dtype.
    """
    from .errors import InputError
    from .reference import load_reference_vlm

    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
            raise InputError(f"--dtype {dtype!r} is not a torch floating dtype; use float32, bfloat16 or float16.")
        dtype = resolved
    hf_model, processor = load_reference_vlm(dtype=dtype or torch.float32, device=device)
    return HookedMultimodalModel.from_hf(hf_model, processor=processor, model_name="tv_lens reference VLM")


# ---------------------------------------------------------------------------------------------- statistics
def score_matrix(predictions: pd.DataFrame, task: str, method: str, metric: str) -> np.ndarray:
    """``[n_seeds, n_items]`` 0/1 scores of one (task, method), seeds and items in a fixed order."""
    rows = predictions[(predictions["task"] == task) & (predictions["method"] == method)]
    pivot = rows.pivot_table(index="seed", columns="query", values=metric, aggfunc="mean", sort=True)
    return pivot.to_numpy(dtype=float)


def bootstrap_draws(predictions: pd.DataFrame, tasks: Sequence[str], methods: Sequence[str], metric: str,
                    n_boot: int = N_BOOTSTRAP, seed: int = 0) -> tuple[dict, dict]:
    """Point estimates and bootstrap replicates over seeds AND items.

    Each replicate draws the seeds (with replacement) and, within each task, the items (with replacement); the SAME
    draw is used for every method, so differences between methods are paired. The ``"Avg"`` column is the mean over
    tasks of each replicate.

    Returns:
        ``(point, draws)``: ``point[(method, task)]`` a float, ``draws[(method, task)]`` an ``[n_boot]`` array.
    """
    rng = np.random.default_rng(seed)
    mats = {(m, t): score_matrix(predictions, t, m, metric) for m in methods for t in tasks}
    n_seeds = next(iter(mats.values())).shape[0]
    seed_draw = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    item_draw = {t: rng.integers(0, mats[(methods[0], t)].shape[1], size=(n_boot, mats[(methods[0], t)].shape[1]))
                 for t in tasks}
    point, draws = {}, {}
    for m in methods:
        for t in tasks:
            mat = mats[(m, t)]
            point[(m, t)] = float(mat.mean())
            per_seed = mat[seed_draw]                                   # [n_boot, n_seeds, n_items]
            draws[(m, t)] = np.take_along_axis(per_seed, item_draw[t][:, None, :], axis=2).mean(axis=(1, 2))
        point[(m, "Avg")] = float(np.mean([point[(m, t)] for t in tasks]))
        draws[(m, "Avg")] = np.mean([draws[(m, t)] for t in tasks], axis=0)
    return point, draws


def ci(values: np.ndarray) -> tuple[float, float]:
    """95% percentile interval."""
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class SuiteResult:
    """Everything one suite produced: per-(method, task) estimates with CIs, paired differences, layers, sweeps."""

    name: str
    tasks: list[str]
    result: EvalResult
    best: dict[str, int]
    sweeps: dict[str, SweepResult]
    layer_exact: pd.DataFrame
    cells: pd.DataFrame = field(default=None)        # method, task, metric, mean, low, high
    diffs: pd.DataFrame = field(default=None)        # pair, task, metric, mean, low, high
    items: dict = field(default_factory=dict)        # task -> {input: image path}

    def table(self, metric: str = "exact_match", fmt: str = "{:.2f} [{:.2f}, {:.2f}]") -> pd.DataFrame:
        """Methods × tasks (+ Avg): ``mean [low, high]`` strings."""
        rows = self.cells[self.cells["metric"] == metric]
        table = rows.assign(cell=[fmt.format(a, b, c) for a, b, c in zip(rows["mean"], rows["low"], rows["high"])])
        table = table.pivot(index="method", columns="task", values="cell")
        table = table.loc[[m for m in METHODS if m in table.index], self.tasks + ["Avg"]]
        table.index = [ROW_NAMES[m] for m in table.index]
        return table

    def __repr__(self) -> str:
        return (f"SuiteResult({self.name}: {len(self.tasks)} tasks, layers {self.best})\n"
                + self.table("exact_match").to_string())

    def _repr_html_(self) -> str:
        return (f"<b>SuiteResult</b> {self.name} (exact match, mean [95% CI]; layers {self.best})"
                + self.table("exact_match").to_html())

    def diff_table(self, metric: str = "exact_match") -> pd.DataFrame:
        rows = self.diffs[self.diffs["metric"] == metric]
        table = rows.assign(cell=[f"{a:+.2f} [{b:+.2f}, {c:+.2f}]" for a, b, c in
                                  zip(rows["mean"], rows["low"], rows["high"])])
        return table.pivot(index="pair", columns="task", values="cell").loc[
            [f"{a} − {b}" for a, b in PAIRS], self.tasks + ["Avg"]]


def summarize(suite: SuiteResult, n_boot: int = N_BOOTSTRAP) -> SuiteResult:
    """Fill ``cells`` and ``diffs`` of ``suite`` from its predictions."""
    cells, diffs = [], []
    for metric in ("exact_match", "correct"):
        point, draws = bootstrap_draws(suite.result.predictions, suite.tasks, METHODS, metric, n_boot=n_boot)
        name = "exact_match" if metric == "exact_match" else "first_token"
        for (m, t), value in point.items():
            cells.append({"method": m, "task": t, "metric": name, "mean": value, **_ci_dict(draws[(m, t)])})
        for a, b in PAIRS:
            for t in suite.tasks + ["Avg"]:
                delta = draws[(a, t)] - draws[(b, t)]
                diffs.append({"pair": f"{a} − {b}", "a": a, "b": b, "task": t, "metric": name,
                              "mean": point[(a, t)] - point[(b, t)], **_ci_dict(delta)})
    suite.cells, suite.diffs = pd.DataFrame(cells), pd.DataFrame(diffs)
    return suite


def _ci_dict(values: np.ndarray) -> dict:
    low, high = ci(values)
    return {"low": low, "high": high}


# ---------------------------------------------------------------------------------------------- protocol
def choose_layer(model, sweep: SweepResult, vectors: dict, tasks: dict, method: str, k: int,
                 template: str, batch_size: int) -> tuple[int, pd.DataFrame]:
    """The ``k`` best layers of the first-token sweep, re-scored by exact match on val (first seed's vectors).

    First-token accuracy alone picks layers where the model just names what it sees (a name's first token
    prefix-matches many labels); exact match of the generated answer does not reward that. Ties: lowest layer.
    """
    ranked = sweep.accuracy_by_layer().sort_values(ascending=False, kind="stable")
    candidates = sorted(int(layer) for layer in ranked.index[:k])
    rows = []
    for layer in candidates:
        scores = []
        for name, task in tasks.items():
            res = evaluate(model, task.val, [method], vectors={method: vectors[name][0]}, layer=layer,
                           query_modality="image", seeds=(0,), max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size,
                           template=template, progress=False, task=name)
            scores.append(float(res.scores["exact_match"].iloc[0]))
        rows.append({"method": method, "layer": layer, "val_first_token": float(ranked.loc[layer]),
                     "val_exact_match": float(np.mean(scores))})
    frame = pd.DataFrame(rows)
    top = frame["val_exact_match"].max()
    return int(frame.loc[frame["val_exact_match"] == top, "layer"].min()), frame


@torch.no_grad()
def run_suite(model, name: str, task_names: Sequence[str], n_val: int, n_test: int, seeds: Sequence[int] = SEEDS,
              n_shots: int = 5, batch_size: int = 16, template: str = "qa", k_layers: int = EXACT_MATCH_CANDIDATES,
              n_boot: int = N_BOOTSTRAP, log=print) -> SuiteResult:
    """Table 3 on image queries for one suite, over ``seeds`` (demo draws and vectors per seed; splits fixed)."""
    tasks = {t: load(t, n_val=n_val, n_test=n_test, seed=0).with_images() for t in task_names}
    text_vectors: dict[str, list] = {t: [] for t in tasks}
    image_vectors: dict[str, list] = {t: [] for t in tasks}
    for t, task in tasks.items():
        log(f"[{name}/{t}] {len(task.val)} val / {len(task.test)} test image items; vectors for seeds {tuple(seeds)}")
        for seed in seeds:
            for modality, store in (("text", text_vectors), ("image", image_vectors)):
                prompts = icl(task.val, n_shots=n_shots, modality=modality, pool=task.train or None, seed=seed,
                              template=template)
                store[t].append(extract_task_vector(model, prompts, task=t, seed=seed, batch_size=batch_size,
                                                    progress=False))
    sweeps, best, layer_rows = {}, {}, []
    for method, vectors in (("xpatch", text_vectors), ("patch", image_vectors)):
        sweeps[method] = layer_sweep(model, vectors, tasks, query_modality="image", template=template,
                                     progress=False)
        best[method], frame = choose_layer(model, sweeps[method], vectors, tasks, method, k_layers, template,
                                           batch_size)
        layer_rows.append(frame)
        log(f"[{name}] {method}: val first-token best {sweeps[method].best}; exact-match re-score "
            f"{dict(zip(frame['layer'], frame['val_exact_match'].round(2)))} -> layer {best[method]}")
    results = []
    for t, task in tasks.items():
        log(f"[{name}/{t}] test: {len(task.test)} image queries × {len(METHODS)} methods × {len(seeds)} seeds")
        results.append(evaluate(
            model, task, list(METHODS), vectors={"patch": image_vectors[t], "xpatch": text_vectors[t]}, layer=best,
            query_modality="image", n_shots=n_shots, seeds=tuple(seeds), max_new_tokens=MAX_NEW_TOKENS,
            batch_size=batch_size, template=template, progress=False))
    suite = SuiteResult(name=name, tasks=list(tasks), result=EvalResult.concat(results), best=best, sweeps=sweeps,
                        layer_exact=pd.concat(layer_rows, ignore_index=True),
                        items={t: {it.input: it.image for it in task.items} for t, task in tasks.items()})
    return summarize(suite, n_boot=n_boot)


def print_suite(suite: SuiteResult) -> None:
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 30):
        print(f"\n=== {suite.name} suite: exact match, mean [95% CI] over seeds and items "
              f"(layers xpatch {suite.best['xpatch']}, patch {suite.best['patch']}) ===")
        print(suite.table("exact_match").to_string())
        print(f"\n{suite.name} suite: first-token accuracy (the paper's metric), same runs")
        print(suite.table("first_token").to_string())
        print(f"\n{suite.name} suite: paired differences, exact match")
        print(suite.diff_table("exact_match").to_string())


def run_demo(args) -> int:
    """``tv-lens demo``: load the reference VLM, run both suites, print the tables, write the report."""
    from .report import write_report

    chosen = getattr(args, "suite", None) or "both"
    if chosen not in ("both", *suites()):
        from .errors import InputError

        raise InputError(f"--suite {chosen!r}: choose both, {', '.join(suites())}.")
    quick = bool(getattr(args, "quick", False))
    n_val, n_test = (8, 12) if quick else (30, 100)
    k_layers = 2 if quick else EXACT_MATCH_CANDIDATES
    out = Path(getattr(args, "out", None) or "tv_lens_demo")
    template = getattr(args, "template", None) or "qa"
    torch.set_grad_enabled(False)
    start = time.perf_counter()

    def log(message: str) -> None:
        """Progress lines with the minutes since the start (the full demo runs ~30 min on 2 CPU cores)."""
        print(f"{(time.perf_counter() - start) / 60:5.1f} min  {message}", flush=True)

    print("Loading the reference VLM (real SmolLM2-135M + the shipped vision tower)...", flush=True)
    model = load_model(device=getattr(args, "device", None), dtype=getattr(args, "dtype", None))
    print(model, flush=True)
    results = {}
    for name, task_names in suites().items():
        if chosen not in ("both", name):
            continue
        results[name] = run_suite(model, name, task_names, n_val=n_val, n_test=n_test, template=template,
                                  k_layers=k_layers, log=log)
        print_suite(results[name])
    phase_task = reference_tasks()[0] if reference_tasks() else "country-capital"
    task = load(phase_task, n_val=n_val, n_test=n_test).with_images()
    queries = (task.val + task.test)[:12 if quick else 50]
    curves = {}
    for modality in ("text", "image"):
        prompts = icl(queries, n_shots=5, modality=modality, query_modality=modality, pool=task.train or None,
                      template=template)
        curves[modality] = phase_curves(model, prompts, task=task)
        print(f"\nPhases, {modality} ICL ({phase_task}, {len(prompts)} prompts): peak layer / probability")
        print(curves[modality].peaks.round(4).to_string())
    elapsed = time.perf_counter() - start
    meta = {"model": model.cfg.model_name, "suites": ", ".join(results), "items": f"val {n_val} / test ≤ {n_test} per task",
            "seeds": ", ".join(map(str, SEEDS)), "template": template, "phase task": phase_task,
            "minutes": round(elapsed / 60, 1)}
    report = write_report(out, results, curves, meta)
    print(f"\nReport: {report} ({elapsed / 60:.1f} min)")
    return 0


def main(argv=None) -> int:
    """``python -m tv_lens.demo``: the demo, with ``--suite`` to run one suite only (``tv-lens demo`` runs both)."""
    import argparse

    parser = argparse.ArgumentParser(description="The offline demo on the reference VLM.")
    parser.add_argument("--out", default="tv_lens_demo")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--template", default="qa")
    parser.add_argument("--suite", default="both", choices=["both", *suites()])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
