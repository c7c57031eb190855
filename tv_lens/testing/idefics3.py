"""Tiny random Idefics3 and SmolVLM: a SigLIP-style tower, the pixel-shuffle connector and a Llama language model.

Both families write an image as ``<fake_token_around_image><row_i_col_j><image>*n`` per tile (rows ended by a
newline) followed by ``\\n<fake_token_around_image><global-img><image>*n<fake_token_around_image>`` for the whole
image; without splitting only the global part is written.

SmolVLM's own processor (``SmolVLMProcessor``) needs the ``num2words`` package (for video prompts) and a video
processor; neither is needed for images, whose prompt layout is token for token the one ``Idefics3Processor``
writes, so the tiny SmolVLM uses ``Idefics3Processor`` with the SmolVLM image processor.
"""

from __future__ import annotations

from . import TinyModel
from .tokenizer import byte_tokenizer

TILE, PATCH, SCALE = 32, 8, 2   # tile side (vision image_size), patch side, pixel-shuffle factor
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE ** 2   # image tokens per tile: 4
SPECIAL_TOKENS = (["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
                  + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])


def _build(model_cls, config_cls, vision_config_cls, image_processor_cls, do_image_splitting: bool,
           tokenizer=None, **overrides) -> TinyModel:
    from transformers import Idefics3Processor, LlamaConfig

    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer(SPECIAL_TOKENS)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       pad_token_id=tokenizer.pad_token_id or 0, bos_token_id=1, eos_token_id=2)
    vision = vision_config_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=TILE, patch_size=PATCH)
    config = config_cls(vision_config=vision, text_config=text, image_token_id=image_token_id, scale_factor=SCALE,
                        **overrides)
    for sub in (config, config.text_config, config.vision_config):
        sub._attn_implementation = "eager"
    model = model_cls(config)
    # Splitting: images are resized to a longest edge of 2 tiles and cut into up to 2x2 tiles + the global image.
    image_processor = image_processor_cls(size={"longest_edge": 2 * TILE}, max_image_size={"longest_edge": TILE},
                                          do_image_splitting=do_image_splitting)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN)
    return TinyModel(model, processor=processor, tokenizer=tokenizer, image_size=(TILE, TILE))


def build_idefics3(do_image_splitting: bool = False, **overrides) -> TinyModel:
    """Tiny Idefics3 (3 Llama layers, d_model 64, 4 image tokens per tile); ``do_image_splitting`` tiles images."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    return _build(Idefics3ForConditionalGeneration, Idefics3Config, Idefics3VisionConfig, Idefics3ImageProcessorPil,
                  do_image_splitting, **overrides)


def build_smolvlm(do_image_splitting: bool = False, tokenizer=None, **overrides) -> TinyModel:
    """Tiny SmolVLM (3 Llama layers, d_model 64, 4 image tokens per tile); ``do_image_splitting`` tiles images;
    ``tokenizer``: one with SmolVLM's added tokens (default: the byte-level toy)."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
    from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    return _build(SmolVLMForConditionalGeneration, SmolVLMConfig, SmolVLMVisionConfig, SmolVLMImageProcessorPil,
                  do_image_splitting, tokenizer=tokenizer, **overrides)
