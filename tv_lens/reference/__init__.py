"""The small, offline reference VLM: real frozen SmolLM2-135M-Instruct + a trained CLIP-style vision front-end.

``load_reference_vlm()`` returns a standard ``transformers.LlavaForConditionalGeneration`` and its
``LlavaProcessor``. See ``docs/reference_vlm.md``.
"""

from tv_lens.reference.model import (
    IMAGE_SIZE,
    IMAGE_TOKEN,
    IMAGE_TOKEN_ID,
    NUM_IMAGE_TOKENS,
    WEIGHTS_DIR,
    ReferenceWeightsError,
    build_processor,
    build_untrained_vlm,
    load_reference_vlm,
    read_metadata,
)

__all__ = [
    "IMAGE_SIZE",
    "IMAGE_TOKEN",
    "IMAGE_TOKEN_ID",
    "NUM_IMAGE_TOKENS",
    "WEIGHTS_DIR",
    "ReferenceWeightsError",
    "build_processor",
    "build_untrained_vlm",
    "load_reference_vlm",
    "read_metadata",
]
