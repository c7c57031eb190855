"""Tiny random Qwen2-VL and Qwen2.5-VL: native-resolution vision towers, 2×2 patch merger, M-RoPE language model.

Pixels are cut into 4×4 patches and merged 2×2, so one LM token covers 8×8 pixels: the 48×32 test image gives a
4×6 grid of 24 image tokens, and the 3-D (temporal, height, width) rotary positions of its tokens differ per axis.
The Qwen2.5-VL tower also uses window attention (16-pixel windows) in its first block and full attention in the last.
"""

from __future__ import annotations

from . import TinyModel
from .llava_next import image_only_processor
from .tokenizer import byte_tokenizer

PATCH, MERGE, TEMPORAL = 4, 2, 2
TEST_IMAGE_SIZE = (48, 32)   # (width, height)
SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _build(config_cls, model_cls, processor_cls, vision: dict, overrides: dict) -> TinyModel:
    from transformers import Qwen2VLImageProcessorPil

    tokenizer = byte_tokenizer(SPECIALS)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIALS}
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                bos_token_id=1, eos_token_id=2,
                # head_dim 16 -> 8 rotary frequencies, split over (temporal, height, width)
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, num_heads=2, in_channels=3, patch_size=PATCH, spatial_merge_size=MERGE,
                  temporal_patch_size=TEMPORAL, **vision)
    config = config_cls(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                        vision_end_token_id=ids["<|vision_end|>"], **overrides)
    config._attn_implementation = "eager"
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = "eager"
    model = model_cls(config)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL,
        size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64})
    processor = image_only_processor(processor_cls)(image_processor=image_processor, tokenizer=tokenizer)
    return TinyModel(model, processor=processor, tokenizer=tokenizer, image_size=TEST_IMAGE_SIZE)


def build_qwen2_vl(**overrides) -> TinyModel:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    # embed_dim: the tower's width; hidden_size: the merger's output (the LM's width).
    vision = dict(embed_dim=32, hidden_size=64, mlp_ratio=2)
    return _build(Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, vision, overrides)


def build_qwen2_5_vl(**overrides) -> TinyModel:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    # hidden_size: the tower's width; out_hidden_size: the merger's output (the LM's width).
    vision = dict(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16,
                  fullatt_block_indexes=[1])
    return _build(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, vision, overrides)
