"""Idefics2 (``Idefics2ForConditionalGeneration``): SigLIP tower + perceiver connector + Mistral.

Images are NOT split by default: the paper ran Idefics2 with ``do_image_splitting=False`` (one 64-token image per
placeholder), while the processor of ``HuggingFaceM4/idefics2-8b`` splits each image into 4 crops + the whole image
(5 × 64 tokens). ``HookedMultimodalModel.from_pretrained`` therefore turns splitting off (``processor_defaults``);
``set_image_splitting(model, True)`` restores the processor's own behaviour. A processor you pass to ``from_hf`` is
used as it is.

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
    image_layout="perceiver",
    processor_defaults=(("do_image_splitting", False),),
    notes="images are not split (the paper's setting, 64 tokens each); set_image_splitting(model, True) splits "
          "them into 4 crops + the whole image, and image[j] then covers every crop of image j.",
)


def set_image_splitting(model, split: bool) -> None:
    """Make an Idefics2 ``HookedMultimodalModel`` split images (``True``: the processor's 5 × 64 tokens) or not
    (``False``: the paper's setting and tv_lens's default, 64 tokens per image)."""
    if model.adapter.family != "idefics2":
        from ..errors import IncompatibleArgumentsError

        raise IncompatibleArgumentsError(f"Image splitting is an Idefics2 option; this model is "
                                         f"{model.adapter.family}.")
    # the processor expands the text's <image> from this same attribute, so text and pixels always agree
    model.processor.image_processor.do_image_splitting = bool(split)

ADAPTERS = [IDEFICS2]
