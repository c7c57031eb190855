"""Tiny random models of every supported family, built offline from transformers config classes.

``tiny_model(family)`` returns a :class:`TinyModel` (HF model in eval mode + processor or tokenizer). Tests,
benchmarks and docs examples use them; they are also handy for trying an experiment before a GPU is free.

Their tokenizer is a one-token-per-byte toy; :mod:`tv_lens.testing.real_tokenizers` builds tiny models on the REAL
tokenizers and chat templates of the paper's checkpoints (:mod:`tv_lens.testing.chat_templates`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

# family name -> module in this package that defines build_<family>()
TINY_FAMILIES: dict[str, str] = {
    "llama": "causal_lm",
    "mistral": "causal_lm",
    "qwen2": "causal_lm",
    "gpt2": "causal_lm",
    "llava": "llava",
    "llava_next": "llava_next",
    "llava_onevision": "llava_next",
    "idefics2": "idefics2",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    "fuyu": "fuyu",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
}

TEXT_ONLY_FAMILIES = frozenset({"llama", "mistral", "qwen2", "gpt2", "gemma3_text"})


@dataclass
class TinyModel:
    """A tiny random HF model with what it needs to read text (and images)."""

    model: Any
    processor: Any = None
    tokenizer: Any = None
    image_size: tuple[int, int] | None = None   # (width, height) of test images for this family

    def hooked(self):
        from ..model import HookedMultimodalModel

        return HookedMultimodalModel.from_hf(self.model, processor=self.processor, tokenizer=self.tokenizer)


def available_families() -> list[str]:
    """Families whose tiny builder exists in this installation."""
    out = []
    for family, module in TINY_FAMILIES.items():
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError:
            continue
        if hasattr(mod, f"build_{family}"):
            out.append(family)
    return out


def tiny_model(family: str, seed: int = 0, **overrides: Any) -> TinyModel:
    """Build the tiny random model of ``family`` (see ``available_families()``), seeded."""
    if family not in TINY_FAMILIES:
        raise KeyError(f"No tiny model for {family!r}; known: {', '.join(TINY_FAMILIES)}")
    module = importlib.import_module(f"{__name__}.{TINY_FAMILIES[family]}")
    torch.manual_seed(seed)
    tiny = getattr(module, f"build_{family}")(**overrides)
    tiny.model.eval()
    return tiny


def random_image(width: int, height: int, seed: int = 0):
    """A deterministic random RGB PIL image."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")
