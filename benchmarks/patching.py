"""Activation-patching grid on the real SmolLM2-135M: tv_lens exact grid vs the one-forward-per-cell loop vs
TransformerLens's ``get_act_patch_resid_pre``, and attribution patching vs the exact grid — ratios in ONE run.

    python benchmarks/patching.py                      # writes benchmarks/results/patching.md
    python benchmarks/patching.py --loop-cells 60      # cells timed for the per-cell loops (extrapolated)

The grid: ``resid_pre`` at every layer (30) × every position of a 5-shot country→capital prompt, metric = logit
difference between the clean and the corrupted answer's first token. The clean and corrupted prompts share their
5 demos and differ only in the query country (same token count), so most cells are no-ops that the default grid
does not re-run; the grid is also timed with ``skip_identical=False`` (every cell re-run), the speed to expect when
the prompts differ at every position.

The naive loop and TransformerLens run one full forward per cell; at ~2,000 cells on 2 shared CPU cores they are
timed on an evenly spread subset of cells (``--loop-cells``) and extrapolated per cell — the table says so. Their
numbers on that subset are compared with the grid's. TransformerLens 4 has no ``HookedTransformer``; its
replacement, ``TransformerBridge``, is built around a copy of the same HF weights and fed to
``transformer_lens.patching.get_act_patch_resid_pre`` (via ``generic_activation_patch`` with an ``index_df`` subset,
the same per-cell loop).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tv_lens as tvl  # noqa: E402
from tv_lens import patching  # noqa: E402
from tv_lens.cli import positive_int  # noqa: E402
from tv_lens import prompts as P  # noqa: E402


def country_capital_pair(model, n_shots: int = 5):
    """(clean, corrupted, clean answer, corrupted answer): same demos, two query countries of equal token count
    whose capitals start with different tokens."""
    task = tvl.tasks.load("country-capital")
    items = list(task.val) + list(task.test)
    demos, rest = items[:n_shots], items[n_shots:]
    length = lambda item: len(P.encode(model, P.icl_prompt(demos, item))["input_ids"][0])  # noqa: E731
    first = lambda text: patching.token_id(model, " " + text)  # noqa: E731
    clean_item = rest[0]
    for other in rest[1:]:
        if length(other) == length(clean_item) and first(other.output) != first(clean_item.output):
            return (P.icl_prompt(demos, clean_item), P.icl_prompt(demos, other), " " + clean_item.output,
                    " " + other.output)
    raise RuntimeError("no corrupted query of the same length")


def spread(cells: list, k: int) -> list:
    step = max(1, len(cells) // k)
    return cells[::step][:k]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loop-cells", type=positive_int, default=60)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "patching.md"))
    parser.add_argument("--skip-tl", action="store_true")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of the exact grid and of attribution (median)")
    parser.add_argument("--layer-step", type=positive_int, default=1,
                        help="run the exact grid on every k-th layer only and extrapolate per cell (slow machines)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    from tv_lens.offline import load_smollm2

    hf_model, tokenizer = load_smollm2()
    model = tvl.HookedMultimodalModel.from_hf(hf_model, tokenizer=tokenizer)
    clean, corrupted, right, wrong = country_capital_pair(model)
    metric = patching.logit_diff(model, right, wrong)
    clean_batch, corrupted_batch = P.encode(model, clean), P.encode(model, corrupted)
    n_pos, n_layers = corrupted_batch["input_ids"].shape[1], model.cfg.n_layers
    n_cells = n_pos * n_layers
    lines = [f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
             f"load average {os.getloadavg()[0]:.1f} at the start (all sides timed in the same run).", "",
             f"Grid: resid_pre, {n_layers} layers × {n_pos} positions = {n_cells} cells; 5-shot country→capital, "
             f"metric logit_diff({right!r}, {wrong!r}).", ""]

    exact_layers = list(range(0, n_layers, args.layer_step))
    model(clean_batch)                                          # warm-up, untimed
    exact_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        exact = patching.activation_patching(model, clean, corrupted, metric, hook="resid_pre", layers=exact_layers,
                                             progress=False)
        exact_times.append((time.perf_counter() - start) * n_layers / len(exact_layers))
    t_exact = statistics.median(exact_times)
    exact_note = "measured, whole grid" if args.layer_step == 1 else (
        f"{len(exact_layers)} layers × {n_pos} positions measured ({len(exact_layers) * n_pos} cells), "
        f"× {n_layers / len(exact_layers):.1f}")
    exact_note += f"; median of {args.repeats} runs (min {min(exact_times):.2f}, max {max(exact_times):.2f})"

    n_noop = int((~exact.computed).sum())
    print(f"exact grid: {t_exact:.1f} s (full-grid equivalent); {n_noop} no-op cells not re-run", flush=True)
    start = time.perf_counter()
    every = patching.activation_patching(model, clean, corrupted, metric, hook="resid_pre", layers=exact_layers,
                                         skip_identical=False, progress=False)
    t_every = (time.perf_counter() - start) * n_layers / len(exact_layers)
    every_diff = float((every.scores - exact.scores).abs().max())
    print(f"exact grid, every cell re-run: {t_every:.1f} s", flush=True)
    attr_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        approx = patching.attribution_patching(model, clean, corrupted, metric, hook="resid_pre")
        attr_times.append(time.perf_counter() - start)
    t_attr = statistics.median(attr_times)
    same = approx.scores[exact_layers]
    corr = float(torch.corrcoef(torch.stack([exact.scores.flatten(), same.flatten()]))[0, 1])
    corr_rec = float(torch.corrcoef(torch.stack([exact.grid[:, -1], approx.grid[exact_layers, -1]]))[0, 1])

    # The naive loop: one full forward of the corrupted prompt per cell, clean value written by a plain hook.
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    _, cache = model.run_with_cache(clean_batch, names_filter=names)
    cells = spread([(layer, pos) for layer in exact_layers for pos in range(n_pos)], args.loop_cells)
    loop_scores = []
    start = time.perf_counter()
    for layer, pos in cells:
        name = names[layer]

        def write(act, hook, name=name, pos=pos):
            act = act.clone()
            act[0, pos] = cache[name][0, pos]
            return act

        logits = model.run_with_hooks(corrupted_batch, fwd_hooks=[(name, write)])[:, -1]
        loop_scores.append(float(metric(logits)[0]))
    t_loop_cell = (time.perf_counter() - start) / len(cells)
    print(f"attribution {t_attr:.1f} s, r={corr:.3f}; loop {t_loop_cell:.2f} s/cell", flush=True)
    row = {layer: i for i, layer in enumerate(exact_layers)}
    loop_diff = max(abs(s - float(exact.scores[row[layer], pos, 0])) for s, (layer, pos) in zip(loop_scores, cells))

    exact_note += (f"; {n_noop} of {exact.computed.numel()} cells are no-ops (clean activation = corrupted, bit for "
                   "bit: the shared demos) and are not re-run")
    rows = [("exact grid (tv_lens)", t_exact, exact_note),
            ("exact grid, every cell re-run (skip_identical=False)", t_every,
             f"prefix cache and layer skipping only; max abs. diff vs default grid {every_diff:.1e}"),
            ("one forward per cell (tv_lens hooks)", t_loop_cell * n_cells,
             f"{len(cells)} cells timed, × {n_cells / len(cells):.1f}; max abs. diff vs grid {loop_diff:.1e}")]

    if not args.skip_tl:
        import pandas as pd
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
        from transformer_lens.patching import generic_activation_patch, get_act_patch_resid_pre

        bridge = build_bridge_from_module(copy.deepcopy(hf_model), type(hf_model).__name__, hf_config=hf_model.config)
        bridge.eval()
        a, b = patching.token_id(model, right), patching.token_id(model, wrong)
        clean_ids, corrupted_ids = clean_batch["input_ids"], corrupted_batch["input_ids"]
        _, tl_cache = bridge.run_with_cache(clean_ids)
        index_df = pd.DataFrame(cells, columns=["layer", "pos"])
        setter = get_act_patch_resid_pre.keywords["patch_setter"]
        start = time.perf_counter()
        tl_scores = generic_activation_patch(bridge, corrupted_ids, tl_cache,
                                             lambda logits: logits[0, -1, a] - logits[0, -1, b],
                                             patch_setter=setter, activation_name="resid_pre", index_df=index_df)
        t_tl_cell = (time.perf_counter() - start) / len(cells)
        tl_diff = max(abs(float(s) - float(exact.scores[row[layer], pos, 0]))
                      for s, (layer, pos) in zip(tl_scores, cells))
        rows.append(("TransformerLens get_act_patch_resid_pre (TransformerBridge)", t_tl_cell * n_cells,
                     f"{len(cells)} cells timed, × {n_cells / len(cells):.1f}; max abs. diff vs grid {tl_diff:.1e}"))
    rows.append(("attribution grid (tv_lens)", t_attr,
                 f"measured, median of {args.repeats} runs (min {min(attr_times):.2f}, max {max(attr_times):.2f}); "
                 f"correlation with the exact grid {corr:.3f} (all cells), {corr_rec:.3f} (last position)"))

    lines += ["| method | seconds for the grid | × the exact grid's time | note |", "| --- | --- | --- | --- |"]
    for name, seconds, note in rows:
        lines.append(f"| {name} | {seconds:.2f} | {seconds / t_exact:.2f} | {note} |")
    lines += ["", f"- exact grid vs one forward per cell: {t_loop_cell * n_cells / t_exact:.1f}× faster "
              f"({t_loop_cell * n_cells / t_every:.1f}× with every cell re-run)"]
    if not args.skip_tl:
        lines.append(f"- exact grid vs TransformerLens: {t_tl_cell * n_cells / t_exact:.1f}× faster")
    lines += [f"- attribution vs exact grid: {t_exact / t_attr:.1f}× faster ({t_every / t_attr:.1f}× vs the grid "
              f"with every cell re-run); Pearson r = {corr:.3f} over "
              f"{exact.scores.numel()} cells (scores), {corr_rec:.3f} on the last-position column",
              f"- clean metric {exact.clean_metric:.3f}, corrupted {exact.corrupted_metric:.3f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Patching benchmark (`python benchmarks/patching.py`)\n\n" + text)


if __name__ == "__main__":
    main()
