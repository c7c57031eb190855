"""Fuyu (``FuyuForCausalLM``): image patches through one linear layer into a Persimmon language model.

Fuyu's HF processor lays out ONE image per prompt, always before the text: rows of ``|SPEAKER|`` tokens (one per
patch, the model's ``image_token_id``) each ended by ``|NEWLINE|``, then ``<s>``, the prompt text and ``<0x04>``
(beginning of answer). The model itself takes any number of images anywhere: it scatters the patch embeddings into
the ``|SPEAKER|`` positions in order. So tv_lens renders the layout itself (:func:`render_images`), which is what
image ICL needs (Mantis-Fuyu, the paper's third model, was trained on interleaved images):

- a prompt that opens with its only image goes through the HF processor, token for token as before;
- any other prompt (``"Q:<image>\\nA:Paris\\n\\nQ:<image>\\nA:"``) becomes ``<s>``, the text tokenized in one piece,
  each ``<image>`` replaced by that image's rows of ``|SPEAKER|`` + ``|NEWLINE|`` (patches from the processor's own
  image processor, one image at a time), then ``<0x04>``. ``pixel_values`` holds every image's patches, in order.

The layout follows the processor's per-image rows; Mantis's own processor may differ in details (e.g. where ``<s>``
sits), so numbers on Mantis-Fuyu are close to, not the same as, the paper's.

``image[j]`` is every ``|SPEAKER|`` token of image j; the ``|NEWLINE|`` row ends between them keep their word
embedding and are not part of it. ``hook_image_features`` is the output of ``vision_embed_tokens``:
``[n_patches of all images, d_model]``, no per-image axis.

Persimmon blocks are pre-norm (``input_layernorm → self_attn → +``, ``post_attention_layernorm → mlp → +``); HF
Fuyu numbers positions ``0..seq-1`` in every row, left padding included.
"""

from __future__ import annotations

import torch

from .base import Adapter, contiguous_runs


def _image_rows(model, image) -> tuple[list[int], torch.Tensor]:
    """``(ids of the image's |SPEAKER|/|NEWLINE| rows, patches [n_patches, patch_dim])`` from the HF processor."""
    processor = model.processor
    encoded = processor(text=[""], images=[[image]], return_tensors="pt", return_legacy_image_output=False)
    ids = encoded["input_ids"][0].tolist()
    bos = processor.tokenizer.convert_tokens_to_ids("<s>")
    rows = ids[:ids.index(bos)] if bos in ids else ids
    while rows and rows[0] not in processor.image_token_ids:   # left padding
        rows = rows[1:]
    return rows, encoded["pixel_values"].reshape(-1, encoded["pixel_values"].shape[-1])


def render_images(model, texts: list[str], images: list[list], padding_side: str = "left") -> dict:
    """Fuyu inputs with images anywhere in the text (see the module docstring).

    Returns:
        ``input_ids``, ``attention_mask`` (``[batch, pos]``, padded on ``padding_side``) and ``pixel_values``
        (``[n_patches of all images, patch_dim]``, in order of appearance).
    """
    from ..errors import InputError

    placeholder = model.adapter.image_placeholder
    processor, tokenizer = model.processor, model.processor.tokenizer
    if all(t.startswith(placeholder) and t.count(placeholder) == 1 for t in texts):   # what the processor writes
        old = tokenizer.padding_side
        tokenizer.padding_side = padding_side
        try:
            encoded = processor(text=[t[len(placeholder):] for t in texts], images=images, return_tensors="pt",
                                padding=True, return_legacy_image_output=False)
        finally:
            tokenizer.padding_side = old
        return dict(encoded)
    bos = tokenizer.convert_tokens_to_ids("<s>")
    boa = tokenizer.convert_tokens_to_ids("<0x04>")
    rows, patches = [], []
    for text, row_images in zip(texts, images):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = []
        start = text.find(placeholder)
        while start >= 0:
            spans.append((start, start + len(placeholder)))
            start = text.find(placeholder, start + len(placeholder))
        ids, emitted = [bos], set()
        for token, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"]):
            hit = [k for k, (s, e) in enumerate(spans) if a < e and s < b]
            if not hit:
                ids.append(token)
                continue
            k = hit[0]
            if not (spans[k][0] <= a and b <= spans[k][1]):
                raise InputError(f"Fuyu: a token of the prompt straddles the image placeholder {placeholder!r} "
                                 f"(chars {a}-{b} of {text[:60]!r}); put a space or newline around it.")
            if k not in emitted:
                emitted.add(k)
                image_ids, image_patches = _image_rows(model, row_images[k])
                ids += image_ids
                patches.append(image_patches)
        rows.append(ids + [boa])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def padded(row: list[int], fill: int) -> list[int]:
        return [fill] * (width - len(row)) + row if padding_side == "left" else row + [fill] * (width - len(row))

    return {"input_ids": torch.tensor([padded(r, pad) for r in rows]),
            "attention_mask": torch.tensor([padded([1] * len(r), 0) for r in rows]),
            "pixel_values": torch.cat(patches)}


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
    image_layout="patch_rows",
    o_proj=("self_attn.dense",),
    # ``pixel_values`` (not the deprecated ``image_patches``), so the patches are cast to the model's dtype.
    processor_kwargs=(("return_legacy_image_output", False),),
    render_images=render_images,
)

ADAPTERS = [FUYU]
