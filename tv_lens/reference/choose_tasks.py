"""Choose the reference VLM's own task suite by measurement on TEXT queries (SmolLM2-135M alone).

For every candidate in :mod:`tv_lens.reference.candidates`: 5-shot text ICL ("Image ICL Base" with text demos and a
text query, i.e. the paper's ``base`` on text), no-context and the majority-of-demos baseline on the test split
(val 30 / test ≤ 100, split seed 0), scored by exact match of the whole greedy answer (first-token beside it).
A task is accepted when ICL ≥ 0.5, no-context ≤ 0.10 and majority ≤ 0.30 (both the demo-majority method and the
share of the task's most common label), and the label is not simply the entity's name (see :func:`judge`). Every
candidate is written to ``results/selection.csv``, rejected ones too;
``--write`` also writes the accepted ones as task files beside the paper's six.

    python -m tv_lens.reference.choose_tasks [--write] [--out results/selection.csv]

Nothing is trained: the measurement only decides which tasks ship.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

ICL_MIN, NO_CONTEXT_MAX, MAJORITY_MAX = 0.5, 0.10, 0.30
SOURCE = "written by the tv_lens authors (transformations and facts of the reference VLM's entities)"


def _entities() -> list[tuple[str, str, str]]:
    from .model import read_metadata

    return [tuple(row) for row in read_metadata()["entities"]]


def task_document(name: str, entities=None) -> dict:
    """The shipped-JSON form of candidate ``name`` (items in entity order)."""
    from .candidates import CANDIDATES, candidate_items

    _, _, instruction, task_word, notes = CANDIDATES[name]
    return {"name": name, "instruction": instruction, "task_word": task_word, "source": SOURCE, "notes": notes,
            "items": candidate_items(name, entities if entities is not None else _entities())}


def render_document(doc: dict) -> str:
    """The shipped files' layout: header fields one per line, then one item per line."""
    head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in doc.items() if k != "items")
    items = ",\n".join("  " + json.dumps(it, ensure_ascii=False) for it in doc["items"])
    return "{\n" + head + ',\n "items": [\n' + items + "\n ]\n}\n"


@torch.no_grad()
def measure(model, names, n_val: int = 30, n_test: int = 100, n_shots: int = 5, seed: int = 0,
            max_new_tokens: int = 8, log=print) -> pd.DataFrame:
    """One row per candidate: exact match and first-token accuracy of ICL / no-context / majority, and the verdict."""
    from ..evaluate import evaluate
    from ..tasks import IMAGES_DIR, from_json

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            doc = task_document(name)
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(doc))
            task = from_json(path, image_root=IMAGES_DIR, n_val=n_val, n_test=n_test, seed=seed)
            start = time.perf_counter()
            res = evaluate(model, task, ["no_context", "majority", "base"], query_modality="text", n_shots=n_shots,
                           seeds=(seed,), max_new_tokens=max_new_tokens, progress=False)
            scores = res.scores.set_index("method")
            row = {"task": name, "n_items": len(doc["items"]), "n_test": len(task.test),
                   "icl_exact": scores.loc["base", "exact_match"], "icl_first_token": scores.loc["base", "accuracy"],
                   "no_context_exact": scores.loc["no_context", "exact_match"],
                   "no_context_first_token": scores.loc["no_context", "accuracy"],
                   "majority_exact": scores.loc["majority", "exact_match"]}
            row = judge(row)
            rows.append(row)
            log(f"{name}: ICL {row['icl_exact']:.2f} (first token {row['icl_first_token']:.2f}), no-context "
                f"{row['no_context_exact']:.2f}, majority {row['majority_exact']:.2f} / top label "
                f"{row['top_label_share']:.2f} -> {'ACCEPT' if row['accepted'] else 'reject: ' + row['reason']} "
                f"({time.perf_counter() - start:.0f} s)")
    return pd.DataFrame(rows)


def judge(row: dict) -> dict:
    """Add the label statistics (from the task data, no model) and the verdict to a measured row.

    Besides the three thresholds on text, a task whose label IS the entity's name for more than ``MAJORITY_MAX`` of
    its items is rejected: the reference VLM is trained to answer an image with the name, so on image queries
    no-context would already score it and the task would show recognition, not transfer.
    """
    doc = task_document(row["task"])
    labels = Counter(it["output"] for it in doc["items"])
    row = dict(row, top_label_share=labels.most_common(1)[0][1] / len(doc["items"]),
               label_is_name_share=sum(it["output"] == it["input"] for it in doc["items"]) / len(doc["items"]))
    reasons = []
    if row["icl_exact"] < ICL_MIN:
        reasons.append(f"ICL {row['icl_exact']:.2f} < {ICL_MIN}")
    if row["no_context_exact"] > NO_CONTEXT_MAX:
        reasons.append(f"no-context {row['no_context_exact']:.2f} > {NO_CONTEXT_MAX}")
    if max(row["majority_exact"], row["top_label_share"]) > MAJORITY_MAX:
        reasons.append(f"majority {max(row['majority_exact'], row['top_label_share']):.2f} > {MAJORITY_MAX}")
    if row["label_is_name_share"] > MAJORITY_MAX:
        reasons.append(f"label is the name for {row['label_is_name_share']:.2f} of items (image no-context names it)")
    row["accepted"] = not reasons
    row["reason"] = "; ".join(reasons)
    return row


def main(argv=None) -> int:
    from ..model import HookedMultimodalModel
    from ..offline import load_smollm2
    from ..tasks import DATA_DIR
    from .candidates import CANDIDATES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/selection.csv"))
    parser.add_argument("--write", action="store_true", help="write the accepted tasks into tv_lens/tasks/data/")
    parser.add_argument("--tasks", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--n-test", type=int, default=100, help="test items per candidate (default 100)")
    parser.add_argument("--append", action="store_true", help="add rows to an existing --out file")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    hf, tokenizer = load_smollm2()
    model = HookedMultimodalModel.from_hf(hf, tokenizer=tokenizer, model_name="SmolLM2-135M-Instruct")
    table = measure(model, args.tasks, n_test=args.n_test, log=lambda msg: print(msg, flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.out.is_file():
        old = pd.read_csv(args.out)
        table = pd.concat([old[~old["task"].isin(table["task"])], table], ignore_index=True)
    table = pd.DataFrame([judge(row) for row in table.to_dict(orient="records")])
    table.to_csv(args.out, index=False, float_format="%.3f")
    print(table.round(2).to_string(index=False))
    if args.write:
        for name in table.loc[table["accepted"], "task"]:
            (DATA_DIR / f"{name}.json").write_text(render_document(task_document(name)), encoding="utf-8")
            print(f"wrote {DATA_DIR / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
