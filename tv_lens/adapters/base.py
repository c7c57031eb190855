"""What an adapter declares: where a family keeps its decoder layers, norms, unembedding and image tokens.

An adapter is data, not code that re-implements a forward pass. Paths are dotted attribute paths from the HF model
object; a tuple of candidates lets one adapter cover several transformers versions (the first that resolves wins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Paths = tuple[str, ...]


def resolve_path(root: nn.Module, paths: str | Paths) -> nn.Module | None:
    """Return the first module found at one of the dotted ``paths`` under ``root``, or ``None``."""
    for path in (paths,) if isinstance(paths, str) else paths:
        obj = root
        try:
            for part in path.split("."):
                obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        except (AttributeError, IndexError, TypeError):
            continue
        if obj is not None:
            return obj
    return None


def _config_get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def default_text_config(config):
    """The language model's config: ``config.text_config`` for VLMs, the config itself for causal LMs."""
    return _config_get(config, "text_config", default=config)


def default_image_token_id(config) -> int | None:
    return _config_get(config, "image_token_id", "image_token_index")


def contiguous_runs(mask: torch.Tensor) -> list[torch.Tensor]:
    """Split the True positions of a 1-D bool mask into runs of consecutive indices."""
    idx = torch.nonzero(mask, as_tuple=False).flatten()
    if idx.numel() == 0:
        return []
    breaks = torch.nonzero(idx[1:] != idx[:-1] + 1, as_tuple=False).flatten() + 1
    return list(torch.tensor_split(idx, breaks.tolist()))


@dataclass(frozen=True)
class Adapter:
    """Where one model family keeps the parts tv_lens hooks.

    Attributes:
        family: short name (``"llava"``, ``"causal_lm"``...).
        architectures: HF class names this adapter accepts.
        layers: path(s) to the ``nn.ModuleList`` of decoder layers.
        final_norm: path(s) to the final norm before the unembedding.
        lm_head: path(s) to the unembedding ``nn.Linear``.
        embed_tokens: path(s) to the token embedding.
        attn_out: path(s), relative to a decoder layer, of the module whose output is ADDED to the residual after
            attention (``self_attn``; for sandwich-norm families the post-attention norm).
        mlp_out: the same for the MLP.
        attention: path(s), relative to a decoder layer, of the attention module, whose forward returns
            ``(output, attention_weights)``: ``blocks.{l}.attn.hook_pattern`` reads the weights there (eager attention
            only).
        o_proj: path(s), relative to a decoder layer, of the attention output projection (an ``nn.Linear`` or a
            GPT-2 ``Conv1D``): its input is the per-head outputs ``[batch, pos, n_heads * d_head]`` (``hook_z``) and
            its weight gives the per-head contributions (``hook_result``). ``None``: no head hooks.
        q_proj / k_proj / v_proj: path(s), relative to a decoder layer, of the query/key/value projections
            (``nn.Linear``, output ``[batch, pos, heads * d_head]``): ``attn.hook_q/k/v`` and ``W_Q/W_K/W_V``.
            A family whose paths do not resolve has neither (they raise, naming this field).
        qkv_proj: path(s) of a fused GPT-2-style ``Conv1D`` whose output is ``[q | k | v]`` (used when the
            three separate projections are absent).
        mlp_in / mlp_gate / mlp_down: path(s), relative to a decoder layer, of the MLP's input, gate and output
            projections: ``W_in``, ``W_gate``, ``W_out``; the input of ``mlp_down`` is ``mlp.hook_post``.
        ln1, ln2: path(s), relative to a decoder layer, of the norm before attention and the norm before the MLP
            (``blocks.{l}.ln1.hook_scale`` / ``hook_normalized``, ``hook_mlp_in`` is ln2's input).
        pos_embed: path(s) to a learned absolute position embedding (``None``: rotary or none).
        image_features: path(s) to the module whose output is the projected image features (``None``: no hook).
        image_features_attr: the field of that module's output holding the features, for modules that return a
            ``ModelOutput`` (``"pooler_output"``); ``None``: the output itself (or its first element).
        image_placeholder: the string a user writes in a prompt for one image (``"<image>"``).
        text_config: config → language-model config.
        image_token_id: config → id of the image token in ``input_ids`` (``None`` for text-only families).
        image_spans: ``(input_ids_row, config) -> list of index tensors``, one per image, overriding the default
            (contiguous runs of the image token).
        image_token_count: config → tokens per image, for families where every image has the same count; runs of
            adjacent images (``<image><image>``) are then split into one span per image.
        has_resid_mid: whether ``hook_resid_mid`` exists (pre-norm residual blocks: attention then MLP).
        processor_image_kwarg: the processor's keyword for images.
        processor_kwargs: keyword arguments always passed to the processor (``(name, value)`` pairs; the caller's
            own keywords win).
        processor_defaults: ``(attribute, value)`` pairs set on the image processor when ``from_pretrained`` loads
            it (Idefics2: ``do_image_splitting=False``, the paper's setting); a processor given to ``from_hf`` is
            left as it is.
        render_images: ``(model, texts, images per prompt, padding_side) -> inputs``: the family lays out images
            itself, anywhere in the text, where its HF processor cannot (Fuyu: several images, text before them);
            ``None``: the processor does it.
        max_images_per_prompt: the most images the family's processor can lay out in one prompt (``None``: no
            limit); ``prepare`` refuses more with an ``InputError``.
        prefix_reuse: a prompt's KV cache may be reused to run only its last token again (false where position
            ids depend on more than the cache length, e.g. Qwen2-VL's M-RoPE).
        image_layout: how the processor lays an image's tokens on the picture, a key of
            :data:`tv_lens.image_geometry.LAYOUTS` (``"clip"``, ``"anyres"``, ``"tiles"``, ``"patch_rows"``,
            ``"merged"``, ``"pooled"``; ``"perceiver"`` for tokens without a place); ``None``: text-only.
        images_first: the processor itself puts a prompt's image before its text (Fuyu): the placeholder must open
            the prompt, and ``prepare`` removes it before the processor sees the text.
    """

    family: str
    architectures: tuple[str, ...]
    layers: Paths
    final_norm: Paths
    lm_head: Paths
    embed_tokens: Paths
    attn_out: Paths = ("self_attn",)
    mlp_out: Paths = ("mlp",)
    attention: Paths = ("self_attn",)
    o_proj: Paths | None = ("self_attn.o_proj",)
    q_proj: Paths | None = ("self_attn.q_proj",)
    k_proj: Paths | None = ("self_attn.k_proj",)
    v_proj: Paths | None = ("self_attn.v_proj",)
    qkv_proj: Paths | None = None
    mlp_in: Paths | None = ("mlp.up_proj",)
    mlp_gate: Paths | None = ("mlp.gate_proj",)
    mlp_down: Paths | None = ("mlp.down_proj",)
    ln1: Paths | None = ("input_layernorm",)
    ln2: Paths | None = ("post_attention_layernorm",)
    pos_embed: Paths | None = None
    image_features: Paths | None = None
    image_features_attr: str | None = None
    image_placeholder: str | None = None
    text_config: Callable = default_text_config
    image_token_id: Callable = default_image_token_id
    image_spans: Callable | None = None
    image_token_count: Callable | None = None
    has_resid_mid: bool = True
    processor_image_kwarg: str = "images"
    processor_kwargs: tuple[tuple[str, Any], ...] = ()
    processor_defaults: tuple[tuple[str, Any], ...] = ()
    render_images: Callable | None = None
    max_images_per_prompt: int | None = None
    images_first: bool = False
    image_layout: str | None = None
    prefix_reuse: bool = True
    notes: str = field(default="", compare=False)

    @property
    def is_multimodal(self) -> bool:
        return self.image_placeholder is not None

    def spans_for_row(self, input_ids_row: torch.Tensor, config) -> list[torch.Tensor]:
        """Token indices of each image in one (expanded) row of ``input_ids``, in order of appearance."""
        if self.image_spans is not None:
            return self.image_spans(input_ids_row, config)
        token_id = self.image_token_id(config)
        if token_id is None:
            return []
        runs = contiguous_runs(input_ids_row == token_id)
        per_image = self.image_token_count(config) if self.image_token_count is not None else None
        if not per_image:
            return runs
        spans = []
        for run in runs:
            spans.extend(run.split(per_image) if run.numel() % per_image == 0 else [run])
        return spans
