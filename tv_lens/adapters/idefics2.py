"""Idefics2 (``Idefics2ForConditionalGeneration``): SigLIP tower + perceiver connector + Mistral.

``hook_image_features`` is the connector's output (MLP projection, then the perceiver resampler):
``[n_images (crops), resampler_n_latents, d_model]``.
"""

from __future__ import annotations

import torch

from .base import Adapter, contiguous_runs

# With ``do_image_splitting`` the processor writes each image as 4 crops + the whole image: 5 runs of
# ``<image>`` tokens joined by single ``<fake_token_around_image>`` tokens.
_RUNS_PER_SPLIT_IMAGE = 5


def _image_spans(input_ids_row: torch.Tensor, config) -> list[torch.Tensor]:
    """One index tensor per image: all of its ``<image>`` tokens (every crop when the image was split).

    Runs of image tokens separated by exactly one token (a ``<fake_token_around_image>``) come from one
    placeholder, or from placeholders written back to back (``<image><image>``). Split images give 5 runs each,
    unsplit images 1; a row is taken as split when every such group has a multiple of 5 runs (the only rows this
    misreads are unsplit rows whose every group is 5k images written back to back).
    """
    runs = contiguous_runs(input_ids_row == config.image_token_id)
    groups: list[list[torch.Tensor]] = []
    for run in runs:
        if groups and int(run[0]) - int(groups[-1][-1][-1]) == 2:
            groups[-1].append(run)
        else:
            groups.append([run])
    split = bool(groups) and all(len(g) % _RUNS_PER_SPLIT_IMAGE == 0 for g in groups)
    per_image = _RUNS_PER_SPLIT_IMAGE if split else 1
    return [torch.cat(g[k:k + per_image]) for g in groups for k in range(0, len(g), per_image)]


IDEFICS2 = Adapter(
    family="idefics2",
    architectures=("Idefics2ForConditionalGeneration",),
    layers=("model.text_model.layers",),
    final_norm=("model.text_model.norm",),
    lm_head=("lm_head",),
    embed_tokens=("model.text_model.embed_tokens",),
    image_features=("model.connector",),
    image_placeholder="<image>",
    image_spans=_image_spans,
    notes="image[j] covers every crop of image j when the processor splits images (idefics2-8b does).",
)

ADAPTERS = [IDEFICS2]
