"""Patching over many cross-modal pairs on the reference VLM: grid time over its FLOP floor, and the per-cell loop.

    python benchmarks/patching_pairs.py                 # 20 text → image pairs; writes results/patching_pairs.md
    python benchmarks/patching_pairs.py --pairs 4 --loop-cells 4   # a quick look

Pairs: the clean prompt is a 5-shot TEXT country→capital prompt, the corrupted one the bare IMAGE query (a flag) of
the same country: they share no prefix (different modality and length), so no cell is a no-op and the prefix skip
of the one-pair benchmark (``benchmarks/patching.py``) does not help. Grid: ``resid_post`` at every layer × 4
columns aligned by name (``"delimiter"``, the last demo's delimiter → the query's, and the two tokens before the
delimiter), metric = probability of the answer's first token as the template writes it (``answer_token``).

The FLOP floor of a grid is what patching cannot avoid: a cell that patches layer ``l`` at position ``p`` must
re-run the tokens from ``p`` on through the layers after ``l``; in units of one full forward of the corrupted
prompt (``T`` tokens, ``L`` layers) that is ``(T - p) × (L - 1 - l) / (T × L)``. The floor in seconds is the sum
over cells and pairs of those units times the measured time of one full forward of that pair's corrupted prompt.
The table also gives the floor plus the two unpatched forwards per pair (clean and corrupted), which any
implementation needs to read the clean activations.

The per-cell loop (one full forward of the corrupted prompt per cell, the clean value written by a hook) is timed on
``--loop-cells`` cells spread over the grid and extrapolated per cell. TransformerLens is not timed: its
``HookedTransformer`` / ``TransformerBridge`` take token ids, not images, so it cannot run an image query.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tv_lens as tvl  # noqa: E402
from tv_lens import patching  # noqa: E402
from tv_lens import prompts as P  # noqa: E402

POSITIONS = ["delimiter", ("delimiter[-1]", "delimiter"), -2, -3]


def pairs(model, n_pairs: int):
    """(texts, images, metrics): 5-shot text prompts and bare image queries of the same countries."""
    task = tvl.tasks.load("country-capital", n_val=10, n_test=max(20, n_pairs)).with_images()
    demos = list(task.val)[:5]
    items = [it for it in task.test if it.image is not None][:n_pairs]
    if len(items) < n_pairs:
        raise SystemExit(f"only {len(items)} imaged test items; ask for fewer pairs")
    texts = [P.icl_prompt(demos, it, demo_modality="text", query_modality="text") for it in items]
    images = [P.query(it, modality="image") for it in items]
    metrics = [patching.probability(model, patching.answer_token(model, it.output)) for it in items]
    return texts, images, metrics


def forward_seconds(model, prompt, repeats: int) -> float:
    batch = P.encode(model, prompt)
    with torch.no_grad():
        model.hf_model(**{k: v for k, v in batch.items()}, use_cache=False)   # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.hf_model(**{k: v for k, v in batch.items()}, use_cache=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor_units(result, n_tokens: int, n_layers: int) -> float:
    """Σ over cells of re-run tokens × re-run layers, in units of one full forward."""
    total = 0.0
    for layer in result.layers:
        for pair in result.positions:
            first = min(pair.corrupted)
            total += (n_tokens - first) * (n_layers - 1 - layer) / (n_tokens * n_layers)
    return total


def loop_cell_seconds(model, clean, corrupted, metric, result, cells: list[tuple[int, int]]) -> float:
    """Median time of one full corrupted forward per cell with the clean value written by a plain hook."""
    names = [f"blocks.{layer}.hook_resid_post" for layer in result.layers]
    clean_batch, corrupted_batch = P.encode(model, clean), P.encode(model, corrupted)
    _, cache = model.run_with_cache(clean_batch, names_filter=names)
    times = []
    for li, pi in cells:
        pair, name = result.positions[pi], names[li]

        def write(act, hook, pair=pair, name=name):
            act = act.clone()
            for c, p in zip(pair.clean, pair.corrupted):
                act[0, p] = cache[name][0, c]
            return act

        start = time.perf_counter()
        with torch.no_grad():
            logits = model.run_with_hooks(corrupted_batch, fwd_hooks=[(name, write)])[:, -1]
            metric(logits)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--loop-cells", type=int, default=12, help="cells timed for the per-cell loop")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "patching_pairs.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    tvl.progress.set_enabled(False)
    from tv_lens.demo import load_model

    model = load_model()
    n_layers = model.cfg.n_layers
    texts, images, metrics = pairs(model, args.pairs)

    start = time.perf_counter()
    grid = patching.activation_patching(model, texts, images, metrics, hook="resid_post", positions=POSITIONS)
    grid_seconds = time.perf_counter() - start
    n_cells = sum(r.recovery.numel() for r in grid.pairs)

    floor = unavoidable = 0.0
    for text, image, result in zip(texts, images, grid.pairs):
        t_corrupted = forward_seconds(model, image, 3)
        t_clean = forward_seconds(model, text, 3)
        n_tokens = len(result.corrupted_tokens)
        floor += floor_units(result, n_tokens, n_layers) * t_corrupted
        unavoidable += t_clean + t_corrupted

    cells = [(li, pi) for li in range(len(grid.layers)) for pi in range(len(grid.positions))]
    step = max(1, len(cells) // args.loop_cells)
    timed = cells[::step][:args.loop_cells]
    per_cell = loop_cell_seconds(model, texts[0], images[0], metrics[0], grid.pairs[0], timed)
    loop_seconds = per_cell * n_cells

    rows = [
        ("exact grid over the pairs (tv_lens)", grid_seconds, "measured, one run"),
        ("FLOP floor (cells only)", floor, "Σ cells (T − p)(L − 1 − l)/(T·L) × measured forward of the pair"),
        ("FLOP floor + clean and corrupted forwards", floor + unavoidable,
         "what any implementation must run"),
        ("one full forward per cell (tv_lens hooks)", loop_seconds,
         f"{len(timed)} cells timed (median {per_cell:.3f} s), × {n_cells} cells"),
    ]
    lines = [
        "# Patching over many cross-modal pairs (`python benchmarks/patching_pairs.py"
        + (f" --pairs {args.pairs}" if args.pairs != 20 else "") + ")",
        "",
        f"Reference VLM ({n_layers} layers), {len(grid.pairs)} text → image country-capital pairs (no shared prefix), "
        f"resid_post × {len(grid.positions)} named columns × {len(grid.layers)} layers = {n_cells} cells; "
        f"{torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}, torch {torch.__version__}.",
        "",
        "| what | seconds | × FLOP floor | × floor + unpatched forwards | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, seconds, note in rows:
        lines.append(f"| {label} | {seconds:.2f} | {seconds / floor:.2f} | {seconds / (floor + unavoidable):.2f} "
                     f"| {note} |")
    lines += ["", f"- grid / per-cell loop: {grid_seconds / loop_seconds:.3f} "
                  f"({loop_seconds / grid_seconds:.1f}× faster than the loop)",
              "- TransformerLens: not timed — it takes token ids, not images, so it cannot run the image queries.",
              f"- mean recovery at the best cell: {repr(grid)}"]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
