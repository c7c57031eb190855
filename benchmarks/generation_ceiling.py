"""How much a KV cache CAN save on this machine: the ceiling behind the patched-generation rows of run.py.

    python benchmarks/generation_ceiling.py

On SmolLM2-135M, 8 prompts (bare queries, then 5-shot ICL prompts) and 8 new tokens, with bare HF calls (medians of
5): one full forward, one one-token decoding step on the KV cache, the 8 full forwards of re-running the growing
prefix, HF `generate`, and tv_lens `generate` with a patch hook. The ceiling of the cache's speed-up is
``8 full forwards / (prefill + 7 decoding steps)``.
"""

from __future__ import annotations

import copy
import time

import torch

import tv_lens as tvl
from tv_lens import hooks as H
from tv_lens import prompts as P
from tv_lens.offline import load_smollm2


def median_time(fn, n: int = 5) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2]


@torch.no_grad()
def main() -> None:
    hf, tokenizer = load_smollm2()
    model = tvl.HookedMultimodalModel.from_hf(hf, tokenizer=tokenizer)
    task = tvl.tasks.load("country-capital")
    vec = torch.zeros(model.cfg.d_model)
    for label, prompts in [("bare queries", P.queries(task.test[:8])),
                           ("5-shot ICL", P.icl(task.test[:8], n_shots=5, pool=task.train))]:
        batch = P.encode(model, prompts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        full = median_time(lambda: hf(input_ids=ids, attention_mask=mask, use_cache=False))
        out = hf(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = out.get("cache", None) or out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        mask1 = torch.cat([mask, torch.ones_like(nxt)], 1)
        copying = median_time(lambda: copy.deepcopy(cache))
        step = median_time(lambda: hf(input_ids=nxt, attention_mask=mask1, past_key_values=copy.deepcopy(cache),
                                      use_cache=True)) - copying
        recompute = 0.0
        for k in range(8):
            ids_k = torch.cat([ids, torch.zeros(8, k, dtype=ids.dtype)], 1)
            mask_k = torch.cat([mask, torch.ones(8, k, dtype=mask.dtype)], 1)
            recompute += median_time(lambda: hf(input_ids=ids_k, attention_mask=mask_k, use_cache=False), 3)
        hf_generate = median_time(lambda: hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8,
                                                      do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                                      eos_token_id=None))
        ours = median_time(lambda: model.generate(
            batch, max_new_tokens=8, fwd_hooks=[("blocks.15.hook_resid_post", H.patch(vec, at="delimiter"))],
            eos_token_id=None))
        ideal = full + 7 * step
        print(f"{label} [8 x {ids.shape[1]} tokens]: full forward {full * 1e3:.0f} ms, decoding step "
              f"{step * 1e3:.0f} ms; recompute 8 tokens {recompute * 1e3:.0f} ms, prefill + 7 steps "
              f"{ideal * 1e3:.0f} ms -> ceiling {recompute / ideal:.2f}x; HF generate {hf_generate * 1e3:.0f} ms, "
              f"tv_lens generate (patched) {ours * 1e3:.0f} ms", flush=True)


if __name__ == "__main__":
    main()
