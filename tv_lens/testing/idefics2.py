"""Tiny random Idefics2: a SigLIP-style vision tower, the perceiver connector and a Mistral language model."""

from __future__ import annotations

from . import TinyModel
from .tokenizer import byte_tokenizer

IMAGE_SIZE, PATCH, N_LATENTS = 32, 8, 4
SPECIAL_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]


def build_idefics2(do_image_splitting: bool = False, tokenizer=None, **overrides) -> TinyModel:
    """Tiny Idefics2 (3 Mistral layers, d_model 64, ``N_LATENTS`` image tokens per image).

    Args:
        do_image_splitting: the image processor's default: ``True`` gives each image 4 crops + the whole image,
            i.e. 5 runs of ``<image>`` tokens per image (as ``HuggingFaceM4/idefics2-8b`` does).
        tokenizer: one with Idefics2's added tokens (default: the byte-level toy).
        **overrides: ``Idefics2Config`` fields.
    """
    from transformers import (Idefics2Config, Idefics2ForConditionalGeneration, Idefics2Processor,
                              MistralConfig)
    from transformers.models.idefics2.configuration_idefics2 import (Idefics2PerceiverConfig,
                                                                     Idefics2VisionConfig)
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer(SPECIAL_TOKENS)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         sliding_window=None, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = Idefics2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=IMAGE_SIZE, patch_size=PATCH)
    perceiver = Idefics2PerceiverConfig(hidden_size=64, resampler_n_latents=N_LATENTS, resampler_depth=1,
                                        resampler_n_heads=2, resampler_head_dim=16, num_key_value_heads=1)
    config = Idefics2Config(vision_config=vision, perceiver_config=perceiver, text_config=text,
                            image_token_id=image_token_id, **overrides)
    for sub in (config, config.text_config, config.vision_config, config.perceiver_config):
        sub._attn_implementation = "eager"
    model = Idefics2ForConditionalGeneration(config)
    image_processor = Idefics2ImageProcessorPil(size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE},
                                                do_image_splitting=do_image_splitting)
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=N_LATENTS)
    return TinyModel(model, processor=processor, tokenizer=tokenizer, image_size=(IMAGE_SIZE, IMAGE_SIZE))
