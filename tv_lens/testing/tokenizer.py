"""An in-memory byte-level tokenizer for tiny test models: one token per byte, plus special tokens.

One token per byte keeps character offsets trivial to reason about in tests, needs no files, and covers any text.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BASE_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def byte_tokenizer(extra_special_tokens: Sequence[str] = (), bos: bool = False,
                   **tokenizer_kwargs) -> PreTrainedTokenizerFast:
    """A fast tokenizer whose vocabulary is the 256 byte-level symbols plus special tokens.

    Args:
        extra_special_tokens: tokens that must stay whole (``"<image>"``, ``"<fake_token_around_image>"``...),
            appended after the base specials ``<pad> <s> </s> <unk>`` (ids 0–3).
        bos: prepend ``<s>`` to every encoding.
        **tokenizer_kwargs: forwarded to ``PreTrainedTokenizerFast``.

    Returns:
        A tokenizer with ``pad_token="<pad>"`` and left padding.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = list(BASE_SPECIALS) + [t for t in extra_special_tokens if t not in BASE_SPECIALS]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for symbol in sorted(alphabet):
        vocab.setdefault(symbol, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    if bos:
        from tokenizers.processors import TemplateProcessing

        backend.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        padding_side="left", **tokenizer_kwargs)
    extra = [t for t in extra_special_tokens if t not in BASE_SPECIALS]
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer
