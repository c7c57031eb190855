"""Does the reference VLM name what it sees? Prompt ``Q:<image>\\nA:``; scoring is greedy.

- ``whole``: greedy decoding reproduces every token of the name (computed in one teacher-forced pass: the argmax at
  each name position equals the name's token given the correct previous tokens, which is exactly what greedy
  decoding would emit). What the model generates after the name is not scored.
- ``first``: the first greedy token equals the name's first token (the paper's metric).
"""

from __future__ import annotations

from collections import defaultdict

import torch

PROMPT = "Q:<image>\nA:"


def caption_ids(tokenizer, name: str) -> tuple[list[int], list[int]]:
    """(prompt ids with 16 image tokens, name ids) such that prompt + name == tokenize(prompt text + name)."""
    from tv_lens.reference.model import IMAGE_TOKEN, NUM_IMAGE_TOKENS

    expanded = PROMPT.replace(IMAGE_TOKEN, IMAGE_TOKEN * NUM_IMAGE_TOKENS)
    prompt = tokenizer.encode(expanded, add_special_tokens=False)
    name_ids = tokenizer.encode(name, add_special_tokens=False)
    full = tokenizer.encode(expanded + name, add_special_tokens=False)
    if full != prompt + name_ids:
        raise ValueError(f"{name!r} does not tokenize the same after 'A:' ({full[len(prompt):]} vs {name_ids})")
    return prompt, name_ids


def batch_inputs(tokenizer, names: list[str], pad_id: int):
    """Right-padded ``input_ids``/``attention_mask`` for ``prompt + name`` rows, plus the name ids per row."""
    rows, name_ids = [], []
    for name in names:
        p, n = caption_ids(tokenizer, name)
        rows.append(p + n)
        name_ids.append(n)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask, name_ids, len(rows[0]) - len(name_ids[0])


@torch.no_grad()
def name_scores(model, processor, images, names: list[str], batch_size: int = 32) -> list[dict]:
    """Per image: ``{"whole": bool, "first": bool, "prediction": first greedy token text}``."""
    tok = processor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = []
    for start in range(0, len(names), batch_size):
        b_names = names[start : start + batch_size]
        b_images = images[start : start + batch_size]
        ids, mask, name_ids, prompt_len = batch_inputs(tok, b_names, pad_id)
        pixel_values = processor.image_processor(b_images, return_tensors="pt").pixel_values
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       pixel_values=pixel_values.to(device, dtype)).logits
        pred = logits.argmax(-1).cpu()
        for i, n in enumerate(name_ids):
            got = pred[i, prompt_len - 1 : prompt_len - 1 + len(n)].tolist()
            out.append({"whole": got == n, "first": got[0] == n[0], "prediction": tok.decode([got[0]])})
    return out


def summarize(scores: list[dict], groups: list[str]) -> dict:
    """Accuracy overall and per group, for both metrics."""
    res = {"n": len(scores)}
    for metric in ("whole", "first"):
        res[metric] = sum(s[metric] for s in scores) / max(1, len(scores))
    per = defaultdict(list)
    for s, g in zip(scores, groups):
        per[g].append(s)
    res["per_group"] = {
        g: {"n": len(v), "whole": sum(s["whole"] for s in v) / len(v), "first": sum(s["first"] for s in v) / len(v)}
        for g, v in sorted(per.items())
    }
    return res
