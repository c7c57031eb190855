"""Recognition on entities the vision side NEVER saw in training: flags of territories and emoji outside the 330.

The shipped recognition numbers (docs/reference_vlm.md) are measured on held-out *views* of trained entities, and the
plain images the tasks use are training images. This check asks the other question: what does the model say for an
image of something it was never trained on? The images are rendered on the fly from the same Debian packages
(``iso-flags-png-320x240``, ``fonts-noto-color-emoji``) with the same renderer; nothing is written into the package.

    python -m tv_lens.reference.unseen [--out results/unseen.csv]

Writes one row per image (name, group, greedy answer, whole-name and first-token match, and whether the answer is
the name of a TRAINED entity) and prints the summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

#: (image key, name, group): none of these keys or names is among the 330 trained entities.
UNSEEN = [
    ("flags/pr.png", "Puerto Rico", "flags"), ("flags/gl.png", "Greenland", "flags"),
    ("flags/hk.png", "Hong Kong", "flags"), ("flags/ps.png", "Palestine", "flags"),
    ("flags/as.png", "American Samoa", "flags"), ("flags/fo.png", "Faroe Islands", "flags"),
    ("flags/bm.png", "Bermuda", "flags"), ("flags/ky.png", "Cayman Islands", "flags"),
    ("flags/aw.png", "Aruba", "flags"), ("flags/gi.png", "Gibraltar", "flags"),
    ("flags/im.png", "Isle of Man", "flags"), ("flags/nc.png", "New Caledonia", "flags"),
    ("flags/mo.png", "Macau", "flags"), ("flags/eh.png", "Western Sahara", "flags"),
    ("flags/gu.png", "Guam", "flags"), ("flags/je.png", "Jersey", "flags"),
    ("emoji/u1f40d.png", "Snake", "animals"), ("emoji/u1f98e.png", "Lizard", "animals"),
    ("emoji/u1f980.png", "Crab", "animals"), ("emoji/u1f99e.png", "Lobster", "animals"),
    ("emoji/u1f40c.png", "Snail", "animals"), ("emoji/u1f982.png", "Scorpion", "animals"),
    ("emoji/u1f991.png", "Squid", "animals"), ("emoji/u1f990.png", "Shrimp", "animals"),
    ("emoji/u1f421.png", "Blowfish", "animals"), ("emoji/u1f9a5.png", "Sloth", "animals"),
    ("emoji/u1f420.png", "Tropical Fish", "animals"), ("emoji/u1f41b.png", "Caterpillar", "animals"),
    ("emoji/u1f354.png", "Hamburger", "foods"), ("emoji/u1f355.png", "Pizza", "foods"),
    ("emoji/u1f32d.png", "Hot Dog", "foods"), ("emoji/u1f32e.png", "Taco", "foods"),
    ("emoji/u1f35e.png", "Bread", "foods"), ("emoji/u1f950.png", "Croissant", "foods"),
    ("emoji/u1f96f.png", "Bagel", "foods"), ("emoji/u1f95e.png", "Pancakes", "foods"),
    ("emoji/u1f9c7.png", "Waffle", "foods"), ("emoji/u1f95a.png", "Egg", "foods"),
    ("emoji/u1f36d.png", "Lollipop", "foods"), ("emoji/u1f382.png", "Birthday Cake", "foods"),
    ("emoji/u1f96c.png", "Leafy Green", "foods"), ("emoji/u1f967.png", "Pie", "foods"),
]


def unseen_entities(trained) -> list[tuple[str, str, str]]:
    """:data:`UNSEEN` minus anything whose key or name is a trained entity (so the check stays honest after a
    retrain on more entities)."""
    keys = {k for k, _, _ in trained}
    names = {n.lower() for _, n, _ in trained}
    return [(k, n, g) for k, n, g in UNSEEN if k not in keys and n.lower() not in names]


@torch.no_grad()
def run(model, processor, entities, trained_names, max_new_tokens: int = 6) -> list[dict]:
    """Greedy answer to ``Q:<image>\\nA:`` for each unseen image; scored against its true name."""
    from .build_images import render
    from .recognition import name_scores

    images = [render(key) for key, _, _ in entities]
    names = [name for _, name, _ in entities]
    scores = name_scores(model, processor, images, names)
    rows = []
    lower_trained = {n.lower(): n for n in trained_names}
    for (key, name, group), image, score in zip(entities, images, scores):
        inputs = processor(text=["Q:<image>\nA:"], images=[image], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        answer = answer.split("\n")[0].strip()
        rows.append({"key": key, "name": name, "group": group, "answer": answer, "whole_name": score["whole"],
                     "first_token": score["first"], "answers_a_trained_name": answer.lower() in lower_trained})
    return rows


def main(argv=None) -> int:
    import pandas as pd

    from .model import load_reference_vlm, read_metadata

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/unseen.csv"))
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    trained = [tuple(e) for e in read_metadata()["entities"]]
    entities = unseen_entities(trained)
    model, processor = load_reference_vlm()
    frame = pd.DataFrame(run(model, processor, entities, [n for _, n, _ in trained]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    summary = {"n": len(frame), "whole_name": float(frame["whole_name"].mean()),
               "first_token": float(frame["first_token"].mean()),
               "answers_a_trained_name": float(frame["answers_a_trained_name"].mean()),
               "per_group": frame.groupby("group")[["whole_name", "first_token", "answers_a_trained_name"]]
               .mean().round(3).to_dict(orient="index")}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print(frame.to_string(index=False))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
