"""Qwen2-VL (``Qwen2VLForConditionalGeneration``) and Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``).

Write ``<|vision_start|><|image_pad|><|vision_end|>`` where an image goes; the processor repeats ``<|image_pad|>``
once per merged 2×2 patch, so an image's token count depends on its size. Image spans are the runs of
``<|image_pad|>`` (each image sits between its own start/end tokens, so runs never merge).

``hook_image_features`` is the vision tower's merged output (``pooler_output``: the patch merger's output, in token
order), ``[n_image_tokens of all images, d_model]`` with no per-image axis. The tower's own module is hooked rather
than the merger because Qwen2.5-VL's merger emits tokens in window-attention order and re-orders them afterwards.

Positions are 3-D M-RoPE (computed by HF from ``mm_token_type_ids`` and ``image_grid_thw``); hooks never touch them.
"""

from __future__ import annotations

from .base import Adapter

_PATHS = dict(
    layers=("model.language_model.layers",),
    final_norm=("model.language_model.norm",),
    lm_head=("lm_head",),
    embed_tokens=("model.language_model.embed_tokens",),
    image_features=("model.visual",),
    image_features_attr="pooler_output",
    image_layout="merged",
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    prefix_reuse=False,  # M-RoPE positions of a new token depend on rope deltas, not just the cache length
)

QWEN2_VL = Adapter(family="qwen2_vl", architectures=("Qwen2VLForConditionalGeneration",), **_PATHS)
QWEN2_5_VL = Adapter(family="qwen2_5_vl", architectures=("Qwen2_5_VLForConditionalGeneration",), **_PATHS)

ADAPTERS = [QWEN2_VL, QWEN2_5_VL]
