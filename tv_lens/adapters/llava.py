"""LLaVA-1.5 (``LlavaForConditionalGeneration``), also the family of the tv_lens reference VLM."""

from .base import Adapter


def _tokens_per_image(config) -> int:
    vision = config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    # "default" drops the CLS token, leaving one token per patch; "full" keeps it.
    return n + (1 if config.vision_feature_select_strategy == "full" else 0)


LLAVA = Adapter(
    family="llava",
    architectures=("LlavaForConditionalGeneration",),
    layers=("model.language_model.layers", "language_model.model.layers"),
    final_norm=("model.language_model.norm", "language_model.model.norm"),
    lm_head=("lm_head", "language_model.lm_head"),
    embed_tokens=("model.language_model.embed_tokens", "language_model.model.embed_tokens"),
    image_features=("model.multi_modal_projector", "multi_modal_projector"),
    image_placeholder="<image>",
    image_token_count=_tokens_per_image,
    image_layout="clip",
)

ADAPTERS = [LLAVA]
