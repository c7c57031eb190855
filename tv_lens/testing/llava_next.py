"""Tiny random LLaVA-NeXT (CLIP + Llama) and LLaVA-OneVision (SigLIP + Qwen2), both with anyres tiling.

The vision towers see 32×32 crops in 8×8 patches (16 tokens per crop). The grid pinpoints allow 1×1, 1×2, 2×1 and
2×2 crops, so a non-square test image (48×32) is tiled into two crops plus the downscaled base image, and its token
count depends on its size (unpadded features + one newline per row), as in the real models.
"""

from __future__ import annotations

from . import TinyModel
from .tokenizer import byte_tokenizer

IMAGE_SIZE, PATCH = 32, 8
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
TEST_IMAGE_SIZE = (48, 32)   # (width, height): anyres picks the 1×2 grid


def image_only_processor(processor_cls):
    """``processor_cls`` without its video-processor slot.

    transformers 5 type-checks every sub-processor slot at construction, and without torchvision no video processor
    (nor the class it is checked against) exists, so a video-capable processor cannot be built with
    ``video_processor=None``. Tiny models only read images, so drop the slot.
    """
    attributes = [a for a in processor_cls.get_attributes() if a != "video_processor"]
    return type(processor_cls.__name__, (processor_cls,),
                {"get_attributes": classmethod(lambda cls: list(attributes)), "__module__": __name__})


def _eager(config) -> None:
    config._attn_implementation = "eager"
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = "eager"


def _text_kwargs(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                bos_token_id=1, eos_token_id=2)


def build_llava_next(tokenizer=None, **overrides) -> TinyModel:
    """Tiny LLaVA-NeXT; ``tokenizer``: one with ``<image>`` added (default: the byte-level toy)."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor)

    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer(["<image>"])
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text = LlamaConfig(**{**_text_kwargs(len(tokenizer)), "pad_token_id": tokenizer.pad_token_id or 0})
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                             vision_feature_layer=-1, vision_feature_select_strategy="default",
                             image_grid_pinpoints=PINPOINTS, projector_hidden_act="gelu", **overrides)
    _eager(config)
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return TinyModel(model, processor=processor, tokenizer=tokenizer, image_size=TEST_IMAGE_SIZE)


def build_llava_onevision(**overrides) -> TinyModel:
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor, Qwen2Config,
                              SiglipVisionConfig)

    tokenizer = byte_tokenizer(["<image>", "<video>"])
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    video_token_id = tokenizer.convert_tokens_to_ids("<video>")
    text = Qwen2Config(**_text_kwargs(len(tokenizer)))
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                                  video_token_index=video_token_id, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", image_grid_pinpoints=PINPOINTS,
                                  vision_aspect_ratio="anyres_max_9", **overrides)
    _eager(config)
    model = LlavaOnevisionForConditionalGeneration(config)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                                      image_grid_pinpoints=PINPOINTS)
    processor = image_only_processor(LlavaOnevisionProcessor)(image_processor=image_processor, tokenizer=tokenizer,
                                        num_image_tokens=(IMAGE_SIZE // PATCH) ** 2,
                                        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    return TinyModel(model, processor=processor, tokenizer=tokenizer, image_size=TEST_IMAGE_SIZE)
