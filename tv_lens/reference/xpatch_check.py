"""A self-contained sanity check of what the reference VLM is for: do text-ICL task vectors transfer to image queries?

    python -m tv_lens.reference.xpatch_check [--tasks country-capital food-color] [--n-test 40]

It is NOT the toolkit's evaluation (that is ``tv_lens.evaluate``); it is a small, dependency-free re-implementation
of the paper's protocol used to measure the shipped weights (numbers in ``docs/reference_vlm.md``). Task outputs
are read here for scoring only; training never reads them.

Protocol (paper / DESIGN §4): text demos ``Q:{x}\\nA:{y}\\n\\n`` x5 + query; the task vector at layer l is the mean over
prompts of ``hidden_states[l + 1]`` at the LAST DEMO's delimiter (the ``:`` ending its ``A:``). Image query
``Q:<image>\\nA:``; xpatch replaces the output of decoder layer l at the last position with the vector. Scoring:
first greedy token, whitespace stripped, correct when it and the label are non-empty and one is a prefix of the
other. Baselines: no_context (the image query alone) and xbase (the 5 text demos in context before the image query).
The layer is chosen on a validation split (best mean over tasks), reported on a disjoint test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from tv_lens.reference import data as D

DEFAULT_TASKS = ["country-capital", "country-currency", "animal-latin", "animal-young", "food-color", "food-flavor"]


def _items(task: str, tasks_dir: Path):
    data = json.loads((tasks_dir / f"{task}.json").read_text())
    return D._items(data)


def _correct(pred: str, label: str) -> bool:
    p, lab = pred.strip(), label.strip()
    return bool(p) and bool(lab) and (p.startswith(lab) or lab.startswith(p))


def _icl_text(demos) -> str:
    return "".join(f"Q:{d['input']}\nA:{d['output']}\n\n" for d in demos)


def _last_demo_delimiter(tok, text: str, demo_part: str) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the token that ends the last demo's ``A:``."""
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    end = demo_part.rstrip("\n").rfind("\nA:") + len("\nA:")
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if a < end <= b:
            if b != end:
                raise ValueError("delimiter is not a token boundary")
            return enc["input_ids"], i
    raise ValueError("delimiter not found")


@torch.no_grad()
def task_vectors(model, tok, items, n_prompts: int, rng) -> torch.Tensor:
    """[n_layers, d] mean hidden state (decoder-layer outputs) at the last demo's delimiter."""
    acc = None
    for _ in range(n_prompts):
        pick = rng.choice(len(items), size=6, replace=False)
        demos = [items[i] for i in pick[:5]]
        demo_part = _icl_text(demos)
        text = demo_part + f"Q:{items[pick[5]]['input']}\nA:"
        ids, pos = _last_demo_delimiter(tok, text, demo_part)
        hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        vec = torch.stack([h[0, pos] for h in hs[1:]])
        acc = vec if acc is None else acc + vec
    return acc / n_prompts


def _layers(model):
    return model.model.language_model.layers


@torch.no_grad()
def first_token(model, processor, text: str, image, patch: tuple[int, torch.Tensor] | None = None) -> str:
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    handle = None
    fired = []
    if patch is not None:
        layer, vec = patch

        def hook(module, args, output):
            hs = output[0] if isinstance(output, tuple) else output
            hs = hs.clone()
            hs[:, -1] = vec.to(hs.dtype)
            fired.append(True)
            return (hs, *output[1:]) if isinstance(output, tuple) else hs

        handle = _layers(model)[layer].register_forward_hook(hook)
    try:
        logits = model(**inputs).logits
    finally:
        if handle is not None:
            handle.remove()
    if patch is not None and not fired:
        raise RuntimeError("patch did not fire")
    return processor.tokenizer.decode([int(logits[0, -1].argmax())])


def evaluate_task(model, processor, task, tasks_dir, images_dir, n_val, n_test, n_prompts, seed, layers):
    items = _items(task, tasks_dir)
    with_img = [it for it in items if it.get("image") and (Path(images_dir) / it["image"]).is_file()]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(with_img))
    val = [with_img[i] for i in order[:n_val]]
    test = [with_img[i] for i in order[n_val : n_val + n_test]]
    vecs = task_vectors(model, processor.tokenizer, items, n_prompts, rng)
    res = {"n_val": len(val), "n_test": len(test)}

    def run(split, method, layer=None):
        ok = 0
        for it in split:
            img = D.load_image(it["image"], images_dir)
            if method == "xbase":
                pick = rng.choice([i for i, x in enumerate(items) if x["input"] != it["input"]], 5, replace=False)
                text = _icl_text([items[i] for i in pick]) + "Q:<image>\nA:"
            else:
                text = "Q:<image>\nA:"
            patch = (layer, vecs[layer]) if method == "xpatch" else None
            ok += _correct(first_token(model, processor, text, img, patch), it["output"])
        return ok / max(1, len(split))

    res["val_xpatch_by_layer"] = {int(layer): run(val, "xpatch", layer) for layer in layers}
    res["_test_fn"] = run
    res["_test_split"] = test
    return res


def main(argv=None) -> int:
    from tv_lens.reference import load_reference_vlm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    ap.add_argument("--tasks-dir", type=Path, default=D.TASKS_DATA_DIR)
    ap.add_argument("--images-dir", type=Path, default=D.IMAGES_DIR)
    ap.add_argument("--weights-dir", type=Path, default=None)
    ap.add_argument("--n-val", type=int, default=20)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--n-prompts", type=int, default=30)
    ap.add_argument("--layers", default="6-24", help="layer range swept on val, e.g. 6-24 or 10,14,18")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    if "-" in args.layers:
        a, b = map(int, args.layers.split("-"))
        layers = list(range(a, b + 1))
    else:
        layers = [int(x) for x in args.layers.split(",")]
    model, processor = load_reference_vlm()
    per_task = {}
    for task in args.tasks:
        per_task[task] = evaluate_task(model, processor, task, args.tasks_dir, args.images_dir, args.n_val,
                                       args.n_test, args.n_prompts, args.seed, layers)
        best_t = max(layers, key=lambda la: per_task[task]["val_xpatch_by_layer"][la])
        print(f"{task}: val xpatch by layer " + " ".join(
            f"{la}:{per_task[task]['val_xpatch_by_layer'][la]:.2f}" for la in layers) + f" (best {best_t})",
            flush=True)
    mean_by_layer = {la: float(np.mean([per_task[t]["val_xpatch_by_layer"][la] for t in args.tasks])) for la in layers}
    best = max(layers, key=lambda la: (mean_by_layer[la], -la))
    print(f"layer chosen on val (mean over tasks): {best} ({mean_by_layer[best]:.3f})")
    table = {}
    for task in args.tasks:
        run = per_task[task].pop("_test_fn")
        test = per_task[task].pop("_test_split")
        table[task] = {"no_context": run(test, "no_context"), "xbase": run(test, "xbase"),
                       "xpatch": run(test, "xpatch", best)}
        print(f"{task}: " + "  ".join(f"{m} {v:.3f}" for m, v in table[task].items()), flush=True)
    avg = {m: float(np.mean([table[t][m] for t in args.tasks])) for m in ("no_context", "xbase", "xpatch")}
    print("average: " + "  ".join(f"{m} {v:.3f}" for m, v in avg.items()))
    if args.json:
        args.json.write_text(json.dumps({"layer": best, "val_mean_by_layer": mean_by_layer, "test": table,
                                         "average": avg, "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
