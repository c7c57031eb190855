"""Max |logit difference| between the hooked model and raw HF, per family (tiny models + the real SmolLM2).

    python benchmarks/parity.py

Two numbers per family: no hooks active, and every hook point caching (bridges installed everywhere).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import two_prompts  # noqa: E402

from tv_lens import HookedMultimodalModel  # noqa: E402
from tv_lens.testing import available_families, tiny_model  # noqa: E402


@torch.no_grad()
def diffs(hf_model, hooked, inputs) -> tuple[float, float]:
    ref = hf_model(**inputs, use_cache=False).logits
    plain = (hooked(inputs) - ref).abs().max().item()
    logits, _ = hooked.run_with_cache(inputs)
    return plain, (logits - ref).abs().max().item()


def main() -> int:
    print("| family | max logit diff, no hooks | max logit diff, all hooks caching |")
    print("| --- | --- | --- |")
    for family in available_families():
        tiny = tiny_model(family)
        hooked = tiny.hooked()
        inputs, _ = two_prompts(tiny, hooked)
        a, b = diffs(tiny.model, hooked, inputs)
        print(f"| {family} | {a:.3g} | {b:.3g} |", flush=True)
    from tv_lens.offline import load_smollm2

    hf, tok = load_smollm2()
    hooked = HookedMultimodalModel.from_hf(hf, tokenizer=tok)
    inputs = hooked.prepare(["Q:France\nA:Paris\n\nQ:Italy\nA:", "Q:Peru\nA:"])
    a, b = diffs(hf, hooked, inputs)
    print(f"| SmolLM2-135M (real) | {a:.3g} | {b:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
