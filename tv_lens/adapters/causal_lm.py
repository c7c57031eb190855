"""Plain causal language models: Llama (SmolLM2, Vicuna), Mistral, Qwen2, GPT-2."""

from .base import Adapter

LLAMA_LIKE = Adapter(
    family="causal_lm",
    architectures=(
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
    ),
    layers=("model.layers",),
    final_norm=("model.norm",),
    lm_head=("lm_head",),
    embed_tokens=("model.embed_tokens",),
)

GPT2 = Adapter(
    family="gpt2",
    architectures=("GPT2LMHeadModel",),
    layers=("transformer.h",),
    final_norm=("transformer.ln_f",),
    lm_head=("lm_head",),
    embed_tokens=("transformer.wte",),
    attn_out=("attn",),
    mlp_out=("mlp",),
    attention=("attn",),
    o_proj=("attn.c_proj",),   # a Conv1D: its weight is [in, out]
    q_proj=None, k_proj=None, v_proj=None,
    qkv_proj=("attn.c_attn",),  # a Conv1D: [q | k | v]
    mlp_in=("mlp.c_fc",), mlp_gate=None, mlp_down=("mlp.c_proj",),
    ln1=("ln_1",), ln2=("ln_2",),
    pos_embed=("transformer.wpe",),
    notes="hook_embed is token + position embeddings (the residual entering block 0).",
)

ADAPTERS = [LLAMA_LIKE, GPT2]
