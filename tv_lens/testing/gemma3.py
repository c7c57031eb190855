"""Tiny random Gemma 3: a SigLIP tower whose 4×4 patch grid is average-pooled to 2×2 = 4 soft tokens per image, and a
Gemma 3 language model with sandwich norms, QK-norm, scaled embeddings, tied unembedding and sliding-window layers
(window 16, two local layers then one global), attending bidirectionally within each image.
"""

from __future__ import annotations

from . import TinyModel
from .tokenizer import byte_tokenizer

IMAGE_SIZE, PATCH, TOKENS_PER_IMAGE = 32, 8, 4
IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}


def gemma3_text_config(vocab_size: int, **overrides):
    """The tiny Gemma 3 language model's config (also used alone as ``Gemma3ForCausalLM``)."""
    from transformers import Gemma3TextConfig

    kwargs = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                  max_position_embeddings=512, sliding_window=16,
                  layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = Gemma3TextConfig(**{**kwargs, **overrides})
    config._attn_implementation = "eager"
    return config


def build_gemma3(**overrides) -> TinyModel:
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil,
                              Gemma3Processor, SiglipVisionConfig)

    tokenizer = byte_tokenizer(list(IMAGE_TOKENS.values()), **IMAGE_TOKENS)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in IMAGE_TOKENS.items()}
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False)
    config = Gemma3Config(text_config=gemma3_text_config(len(tokenizer)), vision_config=vision,
                          mm_tokens_per_image=TOKENS_PER_IMAGE, boi_token_index=ids["boi_token"],
                          eoi_token_index=ids["eoi_token"], image_token_index=ids["image_token"], **overrides)
    config._attn_implementation = "eager"
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = "eager"
    model = Gemma3ForConditionalGeneration(config)
    # HF initialises the projector to zeros, which would make every image look the same; tests need signal.
    import torch

    with torch.no_grad():
        for param in model.model.multi_modal_projector.parameters():
            param.normal_(0.0, 0.2)
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_length=TOKENS_PER_IMAGE)
    return TinyModel(model, processor=processor, tokenizer=tokenizer, image_size=(IMAGE_SIZE, IMAGE_SIZE))


def build_gemma3_text(**overrides) -> TinyModel:
    """Text-only ``Gemma3ForCausalLM`` (family ``gemma3_text``)."""
    from transformers import Gemma3ForCausalLM

    tokenizer = byte_tokenizer()
    return TinyModel(Gemma3ForCausalLM(gemma3_text_config(len(tokenizer), **overrides)), tokenizer=tokenizer)
