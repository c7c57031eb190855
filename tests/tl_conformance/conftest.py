"""Models shared by the conformance files: tiny GPT-2 (learned positions, LayerNorm, fused QKV) and Llama (rotary,
RMSNorm, GQA) with trained-looking norms (unit weights would hide where a norm's weight is applied), and TL 4.3's
``TransformerBridge`` booted on a deep copy of the very same HF model."""

from __future__ import annotations

import copy

import pytest
import torch

import tv_lens as tvl
from tv_lens.testing.causal_lm import build_gpt2, build_llama

_TL_NAMES = {"gpt2": "gpt2", "llama": "meta-llama/Llama-3.2-1B"}   # picks TL's architecture adapter; no download
_BUILDERS = {"gpt2": build_gpt2, "llama": build_llama}


def tiny(kind: str):
    torch.manual_seed(0)
    built = _BUILDERS[kind]()
    built.model.eval()
    with torch.no_grad():
        for name, param in built.model.named_parameters():
            if "norm" in name or ".ln_" in name:
                param.add_(0.3 * torch.randn_like(param))
    return built


@pytest.fixture(scope="package", params=["gpt2", "llama"])
def built(request):
    return request.param, tiny(request.param)


@pytest.fixture(scope="package")
def model(built):
    _, made = built
    return tvl.HookedMultimodalModel.from_hf(made.model, tokenizer=made.tokenizer)


@pytest.fixture(scope="package")
def pair(built, tmp_path_factory):
    """(TL 4.3 TransformerBridge, ours) over the same weights."""
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge")
    from transformers import AutoTokenizer

    kind, made = built
    folder = tmp_path_factory.mktemp(kind)
    made.tokenizer.save_pretrained(folder)   # TL re-loads the tokenizer by its name_or_path
    tl = bridge_mod.TransformerBridge.boot_transformers(_TL_NAMES[kind], hf_model=copy.deepcopy(made.model),
                                                        tokenizer=AutoTokenizer.from_pretrained(folder))
    ours = tvl.HookedMultimodalModel.from_hf(copy.deepcopy(made.model), tokenizer=made.tokenizer)
    return tl, ours


@pytest.fixture
def fresh(built):
    """A model of its own (tests that change the tokenizer or switches)."""
    kind, _ = built
    made = tiny(kind)
    return tvl.HookedMultimodalModel.from_hf(made.model, tokenizer=made.tokenizer)
