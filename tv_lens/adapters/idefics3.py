"""Idefics3 (``Idefics3ForConditionalGeneration``) and SmolVLM (``SmolVLMForConditionalGeneration``).

SigLIP tower + pixel-shuffle connector + Llama. ``hook_image_features`` is the connector's output:
``[n_tiles (all images, global views included), image_seq_len, d_model]``.

An image may be split into tiles; its tokens are then several runs of ``<image>``:
``<fake_token_around_image><row_i_col_j><image>*n`` per tile, then
``<fake_token_around_image><global-img><image>*n<fake_token_around_image>`` for the whole image, which always
comes last. ``image[j]`` is every token of image j: its tiles and its global view.
"""

from __future__ import annotations

import torch

from .base import Adapter, contiguous_runs


def _image_spans(input_ids_row: torch.Tensor, config) -> list[torch.Tensor]:
    """One index tensor per image, tiles and global view together.

    Every image ends with its global view, a run of ``<image>`` preceded by the ``<global-img>`` tag, whereas tile
    runs are preceded by ``<row_i_col_j>`` tags. The last run of a row is therefore a global view, and the tag
    before it tells which runs close an image (no token id beyond ``config.image_token_id`` is needed).
    """
    runs = contiguous_runs(input_ids_row == config.image_token_id)
    if not runs or int(runs[0][0]) == 0:
        return runs
    tag = lambda run: int(input_ids_row[int(run[0]) - 1])  # noqa: E731
    global_tag = tag(runs[-1])
    spans, current = [], []
    for run in runs:
        current.append(run)
        if tag(run) == global_tag:
            spans.append(torch.cat(current))
            current = []
    if current:  # truncated input: tiles without their global view
        spans.append(torch.cat(current))
    return spans


_COMMON = dict(
    layers=("model.text_model.layers",),
    final_norm=("model.text_model.norm",),
    lm_head=("lm_head",),
    embed_tokens=("model.text_model.embed_tokens",),
    image_features=("model.connector",),
    image_placeholder="<image>",
    image_spans=_image_spans,
    image_layout="tiles",
)

IDEFICS3 = Adapter(family="idefics3", architectures=("Idefics3ForConditionalGeneration",), **_COMMON)
SMOLVLM = Adapter(family="smolvlm", architectures=("SmolVLMForConditionalGeneration",), **_COMMON)

ADAPTERS = [IDEFICS3, SMOLVLM]
