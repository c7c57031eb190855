"""The model's configuration (``cfg``) and its weights in TransformerLens shapes.

Per-block weights (``model.blocks[l].attn.W_Q``...) are views of the HF parameters; the model-level stacks
(``model.W_Q`` ``[n_layers, head, d_model, d_head]``...) are, as in TransformerLens, stacked copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import UnsupportedModelError


@dataclass
class HookedModelConfig:
    """What a user needs to know about the wrapped model (TransformerLens calls this ``cfg``).

    Fields TransformerLens also has keep its meaning: ``d_mlp`` (MLP width), ``n_ctx`` (longest context the
    config declares), ``act_fn`` (``"silu"``, ``"gelu_new"``...), ``normalization_type`` (``"RMS"`` or ``"LN"``),
    ``positional_embedding_type`` (``"rotary"`` or ``"standard"``), ``n_key_value_heads`` (GQA),
    ``use_hook_tokens`` (``names_filter=None`` caches ``hook_tokens``; the hook point works either way),
    ``default_prepend_bos`` (whether text gets a leading BOS when ``prepend_bos`` is not given, as in
    TransformerLens; it starts as whether the tokenizer puts one first by itself — TransformerLens starts at
    ``True`` — and setting it changes the default). ``None`` means the family has no such thing.
    """

    model_name: str
    family: str
    architecture: str
    n_layers: int
    d_model: int
    d_vocab: int
    n_heads: int | None
    d_head: int | None
    device: torch.device
    dtype: torch.dtype
    is_multimodal: bool
    image_token_id: int | None
    d_mlp: int | None = None
    n_ctx: int | None = None
    act_fn: str | None = None
    normalization_type: str | None = None
    positional_embedding_type: str | None = None
    n_key_value_heads: int | None = None
    default_prepend_bos: bool = False
    attn_only: bool = False
    final_rms: bool = False
    use_hook_tokens: bool = False

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    @property
    def original_architecture(self) -> str:
        return self.architecture


def _get(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def tokenizer_prepends_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS first by itself."""
    if tokenizer is None or getattr(tokenizer, "bos_token_id", None) is None:
        return False
    try:
        ids = tokenizer("a")["input_ids"]
    except Exception:   # noqa: BLE001 - a processor-only tokenizer that cannot run on bare text
        return False
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def tl_fields(text_config, final_norm, mods, tokenizer) -> dict:
    """The TransformerLens-named config fields read off an HF text config and modules."""
    norm = type(final_norm).__name__.lower()
    mlp_in = next((m for m in mods.mlp_in if m is not None), None) if mods.mlp_in else None
    d_mlp = _get(text_config, "intermediate_size", "n_inner")
    if d_mlp is None and mlp_in is not None:
        weight = mlp_in.weight
        d_mlp = int(weight.shape[0] if isinstance(mlp_in, torch.nn.Linear) else weight.shape[1])
    return dict(
        d_mlp=d_mlp,
        n_ctx=_get(text_config, "max_position_embeddings", "n_positions", "n_ctx"),
        act_fn=_get(text_config, "hidden_act", "activation_function", "hidden_activation"),
        normalization_type="RMS" if "rms" in norm else "LN",
        positional_embedding_type="standard" if mods.pos_embed is not None else "rotary",
        n_key_value_heads=_get(text_config, "num_key_value_heads", "n_head", "num_attention_heads"),
        default_prepend_bos=tokenizer_prepends_bos(tokenizer),
        final_rms="rms" in norm,
    )


class Weights:
    """Mixin: ``W_U, b_U, W_E, W_pos`` and stacked per-layer weights ``W_Q, W_K, W_V, W_O, b_*, W_in, W_out``."""

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """The unembedding (a view of ``lm_head.weight``)."""
        return self._mods.lm_head.weight.T

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        bias = getattr(self._mods.lm_head, "bias", None)
        return bias if bias is not None else self.W_U.new_zeros(self.cfg.d_vocab)

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        """The token embedding (a view of the HF embedding weight)."""
        return self._mods.embed_tokens.weight

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        if self._mods.pos_embed is None:
            raise UnsupportedModelError(
                f"W_pos has no meaning for {self.cfg.family}: positions enter through "
                f"{self.cfg.positional_embedding_type} embeddings inside attention, not a learned table.")
        return self._mods.pos_embed.weight

    def _stack(self, part: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(block, part), name) for block in self.blocks])

    W_Q = property(lambda self: self._stack("attn", "W_Q"), doc="[n_layers, head, d_model, d_head]")
    W_K = property(lambda self: self._stack("attn", "W_K"), doc="[n_layers, head, d_model, d_head], GQA expanded")
    W_V = property(lambda self: self._stack("attn", "W_V"), doc="[n_layers, head, d_model, d_head], GQA expanded")
    W_O = property(lambda self: self._stack("attn", "W_O"), doc="[n_layers, head, d_head, d_model]")
    b_Q = property(lambda self: self._stack("attn", "b_Q"), doc="[n_layers, head, d_head]")
    b_K = property(lambda self: self._stack("attn", "b_K"), doc="[n_layers, head, d_head], GQA expanded")
    b_V = property(lambda self: self._stack("attn", "b_V"), doc="[n_layers, head, d_head], GQA expanded")
    b_O = property(lambda self: self._stack("attn", "b_O"), doc="[n_layers, d_model]")
    W_in = property(lambda self: self._stack("mlp", "W_in"), doc="[n_layers, d_model, d_mlp]")
    W_gate = property(lambda self: self._stack("mlp", "W_gate"), doc="[n_layers, d_model, d_mlp]")
    W_out = property(lambda self: self._stack("mlp", "W_out"), doc="[n_layers, d_mlp, d_model]")
    b_in = property(lambda self: self._stack("mlp", "b_in"), doc="[n_layers, d_mlp]")
    b_out = property(lambda self: self._stack("mlp", "b_out"), doc="[n_layers, d_model]")

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
                         ) -> Float[Tensor, " d_model"]:
        """Sum of the attention (and MLP) output biases of the layers before ``layer`` (TransformerLens)."""
        total = self.W_U.new_zeros(self.cfg.d_model)
        for index in range(layer):
            total = total + self.blocks[index].attn.b_O
            if include_mlp_biases:
                total = total + self.blocks[index].mlp.b_out
        if mlp_input:
            total = total + self.blocks[layer].attn.b_O
        return total
