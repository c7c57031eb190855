"""Running the demo: load the reference VLM, run each suite's Table-3 protocol, print it, write the report.

    tv-lens demo                 # full protocol (val 30 / test ≤ 100 items per task, seeds 0, 1, 2)
    tv-lens demo --quick         # smaller: val 8 / test 12, seeds 0, 1, 2, two candidate layers
    python -m tv_lens.demo       # the same, from the package
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..evaluate import EvalResult, SweepResult, evaluate, layer_sweep
from ..image_report import image_maps_section
from ..lens import phase_curves
from ..model import HookedMultimodalModel
from ..prompts import icl, queries as image_queries
from ..tasks import load
from ..runs import Recipe
from .report import write_report
from .suite import (EXACT_MATCH_CANDIDATES, MAX_NEW_TOKENS, METHODS, N_BOOTSTRAP, QUERY_MODALITY, SEEDS,
                    SuiteResult, reference_tasks, suites, summarize)


def load_model(device: str | None = None, dtype: str | torch.dtype | None = None) -> HookedMultimodalModel:
    """The reference VLM, hooked (float32 on the CPU unless ``device`` / ``dtype`` say otherwise).

    Raises:
        InputError: ``dtype`` names no torch floating dtype.
    """
    from ..reference import load_reference_vlm

    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
            raise InputError(f"--dtype {dtype!r} is not a torch floating dtype; use float32, bfloat16 or float16.")
        dtype = resolved
    hf_model, processor = load_reference_vlm(dtype=dtype or torch.float32, device=device)
    return HookedMultimodalModel.from_hf(hf_model, processor=processor, model_name="tv_lens reference VLM")


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
    recipe = Recipe(n_shots=n_shots, template=template, batch_size=batch_size, progress=False)
    by_task = {}
    for t, task in tasks.items():
        log(f"[{name}/{t}] {len(task.val)} val / {len(task.test)} test image items; vectors for seeds {tuple(seeds)}")
        by_task[t] = recipe.patch_vectors(model, task, ("patch", "xpatch"), seeds, QUERY_MODALITY)
    image_vectors = {t: v["patch"] for t, v in by_task.items()}   # image demos: Patch on image queries
    text_vectors = {t: v["xpatch"] for t, v in by_task.items()}   # text demos: xPatch
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


def image_section(model, results: dict, n_val: int, n_test: int, template: str, log) -> str:
    """The report's "Looking at the image" fragment: attention and per-patch lens maps of three image test queries
    of the first suite's first task, at the layer its xPatch selected (:func:`tv_lens.image_report.image_maps_section`).

    Attention maps read ``hook_pattern``, so the model is switched to eager attention first (results do not change:
    eager and SDPA compute the same attention).
    """
    suite = next(iter(results.values()))
    task = load(suite.tasks[0], n_val=n_val, n_test=n_test).with_images()
    layer = int(suite.best["xpatch"])
    model.hf_model.set_attn_implementation("eager")
    section = image_maps_section(model, image_queries(task.test, modality="image", template=template), layer=layer)
    log(f"image maps: {len(section.rows)} {suite.tasks[0]} image queries at layer {layer}")
    return section.to_html(include_plotlyjs=False)


def run_demo(args) -> int:
    """``tv-lens demo``: load the reference VLM, run both suites, print the tables, write the report."""
    chosen = getattr(args, "suite", None) or "both"
    if chosen not in ("both", *suites()):
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
    sections = [image_section(model, results, n_val, n_test, template, log)] if results else []
    elapsed = time.perf_counter() - start
    meta = {"model": model.cfg.model_name, "suites": ", ".join(results), "items": f"val {n_val} / test ≤ {n_test} per task",
            "seeds": ", ".join(map(str, SEEDS)), "template": template, "phase task": phase_task,
            "minutes": round(elapsed / 60, 1)}
    report = write_report(out, results, curves, meta, sections=sections)
    print(f"\nReport: {report} ({elapsed / 60:.1f} min)")
    return 0


def main(argv=None) -> int:
    """``python -m tv_lens.demo``: the demo, with ``--suite`` to run one suite only (both by default, the reference
    suite first)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tv_lens.demo",
                                     description="The offline demo on the reference VLM.")
    parser.add_argument("--out", default="tv_lens_demo")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--template", default="qa")
    parser.add_argument("--suite", default="both", choices=["both", *suites()])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
