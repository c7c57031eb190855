"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``) and LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``).

Both tile an image into crops (anyres), so an image's token count depends on its size: image spans are the runs of
the image token (the default), one run per image as long as text separates the images in the prompt.
``hook_image_features`` is the projector output per CROP (``[n_crops, tokens_per_crop, d_model]``), before the
crops are unpadded, packed and interleaved with the learned ``image_newline``.
"""

from __future__ import annotations

from .base import Adapter

_PATHS = dict(
    layers=("model.language_model.layers", "language_model.model.layers"),
    final_norm=("model.language_model.norm", "language_model.model.norm"),
    lm_head=("lm_head", "language_model.lm_head"),
    embed_tokens=("model.language_model.embed_tokens", "language_model.model.embed_tokens"),
    image_features=("model.multi_modal_projector", "multi_modal_projector"),
    image_placeholder="<image>",
    image_layout="anyres",
)

LLAVA_NEXT = Adapter(family="llava_next", architectures=("LlavaNextForConditionalGeneration",), **_PATHS)

LLAVA_ONEVISION = Adapter(
    family="llava_onevision",
    architectures=("LlavaOnevisionForConditionalGeneration",),
    notes="A prompt with several images gives each image only its base crop (+ newline); a single image is tiled.",
    **_PATHS,
)

ADAPTERS = [LLAVA_NEXT, LLAVA_ONEVISION]
