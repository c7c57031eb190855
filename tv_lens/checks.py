"""Input checks that keep a batch from running silently wrong (issue 14, class 2).

Called by :meth:`HookedMultimodalModel.prepare` before and after tokenizing:

- :func:`check_texts`: no empty prompt in a batch (its ``last`` position would point at padding);
- :func:`check_images_per_prompt`: images given one list per prompt must match each prompt's placeholders, not
  only the total (else an image lands in another prompt);
- :func:`check_context`: no prompt longer than the model's context window (``max_position_embeddings``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .errors import ContextLengthError, InputError

__all__ = ["check_context", "check_images_per_prompt", "check_texts", "context_length"]


def check_texts(texts: Sequence[str]) -> None:
    """Raise :class:`InputError` for an empty or whitespace-only prompt (its index named)."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"prompt {i} is a {type(text).__name__}, not a string.")
        if not text.strip():
            raise InputError(f"prompt {i} of the batch is empty: it has no token to read or patch (drop it from "
                             "the batch).")


def check_images_per_prompt(images: Any, n_placeholders: Sequence[int]) -> None:
    """When ``images`` is one list per prompt, each list must hold exactly that prompt's placeholder count.

    A flat list of images (in order over the whole batch) is only checked in total by the caller. Every image must
    have pixels: a 0×0 image raises :class:`InputError` here instead of crashing inside the processor.
    """
    flat = images if isinstance(images, (list, tuple)) else [images]
    for i, item in enumerate(flat):
        for image in item if isinstance(item, (list, tuple)) else [item]:
            size = getattr(image, "size", None)
            if isinstance(size, tuple) and len(size) == 2 and min(size) <= 0:
                raise InputError(f"image {i} is empty ({size[0]}×{size[1]} pixels); a processor cannot read it.")
    if not isinstance(images, (list, tuple)) or not any(isinstance(x, (list, tuple)) or x is None for x in images):
        return
    if len(images) != len(n_placeholders):
        raise InputError(f"images were given per prompt ({len(images)} lists) but the batch has "
                         f"{len(n_placeholders)} prompts: give one list (maybe empty) per prompt.")
    for i, (given, want) in enumerate(zip(images, n_placeholders)):
        count = 0 if given is None else len(given) if isinstance(given, (list, tuple)) else 1
        if count != want:
            raise InputError(f"prompt {i} has {want} image placeholder(s) but {count} image(s) were given for it; "
                             "images never move between prompts.")


def context_length(model) -> int | None:
    """The model's context window in tokens (``max_position_embeddings`` / ``n_positions``), ``None`` if unknown."""
    config = getattr(getattr(model, "hf_model", None), "config", None)
    if config is None:
        return None
    for cfg in (getattr(model.adapter, "text_config", lambda c: c)(config), config):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def check_context(model, input_ids: Tensor, attention_mask: Tensor | None = None) -> None:
    """Raise :class:`ContextLengthError` when a row holds more tokens than the model's context window."""
    limit = context_length(model)
    if limit is None or input_ids.ndim != 2:
        return
    lengths = (attention_mask.sum(-1) if attention_mask is not None else
               input_ids.new_full((input_ids.shape[0],), input_ids.shape[1]))
    too_long = (lengths > limit).nonzero().flatten().tolist()
    if too_long:
        row = too_long[0]
        raise ContextLengthError(f"prompt {row} has {int(lengths[row])} tokens but {model.cfg.model_name} reads at "
                                 f"most {limit} (max_position_embeddings): shorten it (fewer shots?), or pass "
                                 "truncate=True to keep its first tokens only (TransformerLens's to_tokens default).")
