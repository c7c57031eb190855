"""Fuyu (``FuyuForCausalLM``): image patches through one linear layer into a Persimmon language model.

Fuyu's processor lays out ONE image per prompt, always before the text: rows of ``|SPEAKER|`` tokens (one per
patch, the model's ``image_token_id``) each ended by ``|NEWLINE|``, then ``<s>``, the prompt text and ``<0x04>``
(beginning of answer). So write the placeholder ``<image>`` at the start of a prompt (``"<image>Q:\\nA:"``); it is
removed before the processor sees the text, and a prompt with two images is refused (``InputError``).

``image[j]`` is every ``|SPEAKER|`` token of image j; the ``|NEWLINE|`` row ends between them keep their word
embedding and are not part of it. ``hook_image_features`` is the output of ``vision_embed_tokens``:
``[n_patches of all images, d_model]``, no per-image axis.

Persimmon blocks are pre-norm (``input_layernorm → self_attn → +``, ``post_attention_layernorm → mlp → +``); HF
Fuyu numbers positions ``0..seq-1`` in every row, left padding included.
"""

from __future__ import annotations

import torch

from .base import Adapter, contiguous_runs


def _image_spans(input_ids_row: torch.Tensor, config) -> list[torch.Tensor]:
    """One index tensor per image: its ``|SPEAKER|`` runs, which only a single ``|NEWLINE|`` separates."""
    spans: list[list[torch.Tensor]] = []
    for run in contiguous_runs(input_ids_row == config.image_token_id):
        if spans and int(run[0]) - int(spans[-1][-1][-1]) == 2:
            spans[-1].append(run)
        else:
            spans.append([run])
    return [torch.cat(runs) for runs in spans]


FUYU = Adapter(
    family="fuyu",
    prefix_reuse=False,
    architectures=("FuyuForCausalLM",),
    layers=("model.language_model.layers", "language_model.model.layers"),
    final_norm=("model.language_model.final_layernorm", "language_model.model.final_layernorm"),
    lm_head=("lm_head", "language_model.lm_head"),
    embed_tokens=("model.language_model.embed_tokens", "language_model.model.embed_tokens"),
    image_features=("model.vision_embed_tokens", "vision_embed_tokens"),
    image_placeholder="<image>",
    image_spans=_image_spans,
    o_proj=("self_attn.dense",),
    # ``pixel_values`` (not the deprecated ``image_patches``), so the patches are cast to the model's dtype.
    processor_kwargs=(("return_legacy_image_output", False),),
    max_images_per_prompt=1,
    images_first=True,
)

ADAPTERS = [FUYU]
