"""Gemma 3: ``Gemma3ForConditionalGeneration`` (family ``gemma3``) and text-only ``Gemma3ForCausalLM``
(``gemma3_text``).

Sandwich norms: the residual receives ``post_attention_layernorm(attn)`` and ``post_feedforward_layernorm(mlp)``,
so those norms' outputs are ``hook_attn_out`` / ``hook_mlp_out`` and ``resid_pre + attn_out + mlp_out = resid_post``
still holds. ``hook_embed`` is already scaled by ``sqrt(d_model)`` (the scale lives inside the embedding module).

Write ``<start_of_image>`` where an image goes; the processor expands it to ``\\n\\n<start_of_image>`` +
``mm_tokens_per_image`` × ``<image_soft_token>`` + ``<end_of_image>\\n\\n``. Image spans are the runs of soft tokens
(the ``<end_of_image>\\n\\n`` wrapper keeps adjacent images apart).
``hook_image_features`` is the projector output ``[n_images, mm_tokens_per_image, d_model]``.
"""

from __future__ import annotations

from .base import Adapter

_SANDWICH = dict(attn_out=("post_attention_layernorm",), mlp_out=("post_feedforward_layernorm",),
                 ln2=("pre_feedforward_layernorm",))

GEMMA3 = Adapter(
    family="gemma3",
    architectures=("Gemma3ForConditionalGeneration",),
    layers=("model.language_model.layers", "language_model.model.layers"),
    final_norm=("model.language_model.norm", "language_model.model.norm"),
    lm_head=("lm_head", "language_model.lm_head"),
    embed_tokens=("model.language_model.embed_tokens", "language_model.model.embed_tokens"),
    image_features=("model.multi_modal_projector", "multi_modal_projector"),
    image_placeholder="<start_of_image>",
    image_layout="pooled",
    notes="With pan-and-scan on (do_pan_and_scan=True), each crop of an image is a span of its own.",
    **_SANDWICH,
)

GEMMA3_TEXT = Adapter(
    family="gemma3_text",
    architectures=("Gemma3ForCausalLM",),
    layers=("model.layers",),
    final_norm=("model.norm",),
    lm_head=("lm_head",),
    embed_tokens=("model.embed_tokens",),
    **_SANDWICH,
)

ADAPTERS = [GEMMA3, GEMMA3_TEXT]
