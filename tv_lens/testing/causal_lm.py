"""Tiny random causal LMs: Llama, Mistral, Qwen2, GPT-2."""

from __future__ import annotations

from . import TinyModel
from .tokenizer import byte_tokenizer

D_MODEL, N_LAYERS, N_HEADS = 64, 3, 4


def _common(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS,
                num_attention_heads=N_HEADS, num_key_value_heads=2, max_position_embeddings=512,
                pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                attn_implementation="eager")


def build_llama(tokenizer=None, **overrides) -> TinyModel:
    """Tiny Llama; ``tokenizer``: any tokenizer (default: the byte-level toy)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(**{**_common(len(tokenizer)), **overrides}))
    return TinyModel(model, tokenizer=tokenizer)


def build_mistral(tokenizer=None, **overrides) -> TinyModel:
    """Tiny Mistral; ``tokenizer``: any tokenizer (default: the byte-level toy)."""
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
    model = MistralForCausalLM(MistralConfig(**{**_common(len(tokenizer)), "sliding_window": None, **overrides}))
    return TinyModel(model, tokenizer=tokenizer)


def build_qwen2(**overrides) -> TinyModel:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_tokenizer()
    model = Qwen2ForCausalLM(Qwen2Config(**{**_common(len(tokenizer)), **overrides}))
    return TinyModel(model, tokenizer=tokenizer)


def build_gpt2(**overrides) -> TinyModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = byte_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
                        n_positions=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                        attn_implementation="eager", **overrides)
    return TinyModel(GPT2LMHeadModel(config), tokenizer=tokenizer)
