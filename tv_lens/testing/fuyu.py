"""Tiny random Fuyu: raw image patches through one linear layer (``vision_embed_tokens``) into a Persimmon LM.

Fuyu's processor writes an image as rows of ``|SPEAKER|`` tokens (one per patch), each row ended by ``|NEWLINE|``,
then ``<s>``, then the prompt text, then ``<0x04>`` (beginning of answer). It tokenizes the image part separately
and drops its first token, the ``▁`` that Fuyu's SentencePiece tokenizer puts at the start of every text. The tiny
tokenizer does the same: bytes with a prefix space (``Ġ``) and ``|SPEAKER|``/``|NEWLINE|`` as ordinary vocabulary
entries (built by BPE merges, as in the real vocabulary), so the processor's layout comes out token for token.
"""

from __future__ import annotations

import numpy as np
import torch

from . import TinyModel

IMAGE_SIZE, PATCH = 32, 8
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<0x04>")
IMAGE_WORDS = ("|SPEAKER|", "|NEWLINE|")


def fuyu_tokenizer():
    """A byte-level tokenizer with a prefix space and ``|SPEAKER|``/``|NEWLINE|`` as vocabulary entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    merges = []
    for word in IMAGE_WORDS:
        for k in range(2, len(word) + 1):
            merges.append((word[:k - 1], word[k - 1]))
            vocab.setdefault(word[:k], len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left")


def _image_processor(**kwargs):
    from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

    class FuyuImageProcessorPilTensors(FuyuImageProcessorPil):
        """transformers 5.23: ``FuyuProcessor`` hands ``patchify_image`` torch tensors, which the PIL (numpy)
        backend cannot transpose; the torchvision backend, not installed here, takes tensors. Same patches."""

        def patchify_image(self, image, patch_size=None):
            if isinstance(image, torch.Tensor):
                patches = super().patchify_image(image.numpy(), patch_size)
                return torch.from_numpy(np.ascontiguousarray(patches))
            return super().patchify_image(image, patch_size)

    return FuyuImageProcessorPilTensors(**kwargs)


def build_fuyu(**overrides) -> TinyModel:
    """Tiny Fuyu (3 Persimmon layers, d_model 64, 8x8 patches: a 32x32 image is 16 ``|SPEAKER|`` tokens)."""
    from transformers import FuyuConfig, FuyuForCausalLM, FuyuProcessor, PersimmonConfig

    tokenizer = fuyu_tokenizer()
    text = PersimmonConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, max_position_embeddings=1024, qk_layernorm=True,
                           partial_rotary_factor=0.5, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = FuyuConfig(text_config=text, image_size=IMAGE_SIZE, patch_size=PATCH, num_channels=3,
                        image_token_id=tokenizer.convert_tokens_to_ids("|SPEAKER|"), **overrides)
    for sub in (config, config.text_config):
        sub._attn_implementation = "eager"
    model = FuyuForCausalLM(config)
    image_processor = _image_processor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                       patch_size={"height": PATCH, "width": PATCH})
    processor = FuyuProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return TinyModel(model, processor=processor, tokenizer=tokenizer, image_size=(IMAGE_SIZE, IMAGE_SIZE))
