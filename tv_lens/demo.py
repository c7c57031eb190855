"""The main job: the paper's Table-3 protocol on the offline reference VLM (real SmolLM2-135M + trained vision side).

For the six tasks, on image queries: no_context, majority ("Random"), image-ICL base and patch, text-ICL xbase
and xpatch, with the patch layer of each method chosen on validation (mean over tasks); then Figure 3's phase
curves for text and image ICL of country-capital; then an HTML report with the table and the figures.

    tv-lens demo                 # full protocol (val 30 / test ≤ 100 items per task)
    tv-lens demo --quick         # a few minutes: val 10 / test 20
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import pandas as pd
import torch

from . import plot
from .evaluate import EvalResult, evaluate, layer_sweep
from .lens import phase_curves
from .model import HookedMultimodalModel
from .prompts import icl
from .tasks import list_tasks, load
from .vectors import extract_task_vector

#: Tokens generated per answer in the demo (exact match needs the whole label).
MAX_NEW_TOKENS = 8

ROW_NAMES = {
    "majority": "Random (majority label)",
    "no_context": "No Context",
    "base": "Image ICL Base",
    "patch": "Image ICL Patch",
    "xbase": "Text ICL xBase",
    "xpatch": "Text ICL xPatch",
}


def load_model() -> HookedMultimodalModel:
    """The reference VLM, hooked."""
    from .reference import load_reference_vlm

    hf_model, processor = load_reference_vlm()
    return HookedMultimodalModel.from_hf(hf_model, processor=processor, model_name="tv_lens reference VLM")


@torch.no_grad()
def run_protocol(model, task_names, n_val: int, n_test: int, n_shots: int = 5, seed: int = 0,
                 batch_size: int = 16, max_new_tokens: int = MAX_NEW_TOKENS, template: str = "qa",
                 log=print) -> tuple[dict, dict, dict]:
    """Table 3 on image queries.

    Returns:
        ``(tables, best layers per method, sweeps per method)``; ``tables`` maps ``"accuracy"`` (first-token
        prefix match, the paper's metric) and ``"exact_match"`` (the whole greedy answer of up to
        ``max_new_tokens`` tokens equals the label) to a methods × tasks DataFrame, and ``"predictions"`` to one
        row per prompt (method, task, label, first token, answer).
    """
    tasks = {name: load(name, n_val=n_val, n_test=n_test, seed=seed).with_images() for name in task_names}
    text_vectors, image_vectors = {}, {}
    for name, task in tasks.items():
        pool = task.train or None
        log(f"[{name}] {len(task.val)} val / {len(task.test)} test image items; extracting text and image vectors")
        text_vectors[name] = extract_task_vector(
            model, icl(task.val, n_shots=n_shots, modality="text", pool=pool, seed=seed, template=template),
            task=name, seed=seed, batch_size=batch_size)
        image_vectors[name] = extract_task_vector(
            model, icl(task.val, n_shots=n_shots, modality="image", pool=pool, seed=seed, template=template),
            task=name, seed=seed, batch_size=batch_size)
    log("Layer sweeps on validation (image queries), mean over tasks")
    sweeps = {"xpatch": layer_sweep(model, text_vectors, tasks, query_modality="image", template=template),
              "patch": layer_sweep(model, image_vectors, tasks, query_modality="image", template=template)}
    best = {method: sweep.best for method, sweep in sweeps.items()}
    log(f"Best layers: text-ICL xpatch {best['xpatch']}, image-ICL patch {best['patch']}")
    results = []
    for name, task in tasks.items():
        results.append(evaluate(
            model, task, ["no_context", "majority", "base", "patch", "xbase", "xpatch"],
            vectors={"patch": image_vectors[name], "xpatch": text_vectors[name]}, layer=best,
            query_modality="image", n_shots=n_shots, seeds=(seed,), max_new_tokens=max_new_tokens,
            batch_size=batch_size, template=template))
    result = EvalResult.concat(results)
    tables = {}
    for metric in ("accuracy", "exact_match"):
        table = result.table(metric)
        table.index = [ROW_NAMES.get(m, m) for m in table.index]
        tables[metric] = table
    tables["predictions"] = result.predictions
    return tables, best, sweeps


def write_report(out: Path, tables: dict, best: dict, sweeps: dict, figures: dict, meta: dict) -> Path:
    """One self-contained HTML file: the table, the best layers, and the figures (plotly.js inlined once)."""
    out.mkdir(parents=True, exist_ok=True)
    parts = ["<html><head><meta charset='utf-8'><title>tv_lens demo</title></head><body>",
             "<h1>Task vectors are cross-modal — reference VLM</h1>",
             "<p>" + html.escape(", ".join(f"{k}: {v}" for k, v in meta.items())) + "</p>",
             "<h2>Table 3 (image queries, first-token accuracy on test)</h2>", tables["accuracy"].round(3).to_html(),
             "<h2>Same runs, exact match of the whole answer</h2>", tables["exact_match"].round(3).to_html(),
             "<p>Patch layers chosen on validation: " + html.escape(str(best)) + "</p>"]
    first = True
    for title, fig in figures.items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False))
        first = False
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    tables["accuracy"].to_csv(out / "table3.csv")
    tables["exact_match"].to_csv(out / "table3_exact_match.csv")
    tables["predictions"].to_csv(out / "predictions.csv", index=False)
    for method, sweep in sweeps.items():
        sweep.scores.to_csv(out / f"sweep_{method}.csv", index=False)
    return path


def run_demo(args) -> int:
    """``tv-lens demo``: load the reference VLM, run the protocol, print the table, write the report."""
    quick = bool(getattr(args, "quick", False))
    n_val, n_test = (10, 20) if quick else (30, 100)
    out = Path(getattr(args, "out", None) or "tv_lens_demo")
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    print("Loading the reference VLM (real SmolLM2-135M + the shipped vision tower)...", flush=True)
    model = load_model()
    print(model, flush=True)
    template = getattr(args, "template", None) or "qa"
    tables, best, sweeps = run_protocol(model, list_tasks(), n_val=n_val, n_test=n_test, template=template)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print("\nTable 3 on the reference VLM (image queries, first-token accuracy):")
        print(tables["accuracy"].round(2).to_string())
        print(f"\nSame runs, exact match of the whole greedy answer (up to {MAX_NEW_TOKENS} tokens):")
        print(tables["exact_match"].round(2).to_string())
    print(f"Patch layers (val): {best}")
    task = load("country-capital", n_val=n_val, n_test=n_test).with_images()
    n_phase = 20 if quick else 50
    queries = (task.val + task.test)[:n_phase]
    figures = {}
    for modality in ("text", "image"):
        prompts = icl(queries, n_shots=5, modality=modality, query_modality=modality, pool=task.train or None,
                      template=template)
        curves = phase_curves(model, prompts, task=task)
        print(f"\nPhases, {modality} ICL (country-capital, {len(prompts)} prompts): peak layer / probability")
        print(curves.peaks.round(4).to_string())
        figures[f"Phase curves, {modality} ICL (Figure 3)"] = plot.phases(
            curves, title=f"{modality} ICL, country-capital")
    figures["Layer sweep, text-ICL xpatch (validation)"] = plot.sweep(sweeps["xpatch"])
    figures["Layer sweep, image-ICL patch (validation)"] = plot.sweep(sweeps["patch"])
    elapsed = time.perf_counter() - start
    report = write_report(out, tables, best, sweeps, figures,
                          {"model": model.cfg.model_name, "items": f"val {n_val} / test {n_test} per task",
                           "template": template,
                           "seconds": round(elapsed)})
    print(f"\nReport: {report} ({elapsed / 60:.1f} min)")
    return 0
