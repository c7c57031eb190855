"""TransformerLens's model parts as modules: ``model.embed``, ``model.pos_embed``, ``model.unembed`` (each a view of
the HF module it stands for, callable like TransformerLens's), and the head-level analysis TransformerLens offers on
top of the weights: ``OV`` / ``QK`` factored matrices, ``all_head_labels``, ``all_composition_scores``."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import FactoredMatrix

from ..errors import IncompatibleArgumentsError, UnsupportedModelError, VectorError


class Embed(nn.Module):
    """``model.embed``: token ids ``[batch, pos]`` → the token embedding ``[batch, pos, d_model]`` (the family's own
    embedding module, so Gemma's scaling is included), ``W_E [d_vocab, d_model]``."""

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        self.__dict__["_embedding"] = embedding

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self._embedding.weight

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self._embedding(tokens.to(self._embedding.weight.device))


class PosEmbed(nn.Module):
    """``model.pos_embed``: token ids ``[batch, pos]`` → the learned position embedding ``[batch, pos, d_model]``
    (positions ``0 .. pos - 1``; with ``attention_mask``, real tokens count from 0 and padding gets zeros), ``W_pos``. Families with rotary
    positions have none: calling it raises naming why."""

    def __init__(self, table: nn.Module | None, family: str) -> None:
        super().__init__()
        self.__dict__.update(_table=table, _family=family)

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self._require().weight

    def _require(self) -> nn.Module:
        if self._table is None:
            raise UnsupportedModelError(
                f"{self._family} has no learned position table: positions enter through rotary embeddings inside "
                "attention (TransformerLens: positional_embedding_type='rotary', no pos_embed either).")
        return self._table

    def forward(self, tokens: Int[Tensor, "batch pos"], past_kv_pos_offset: int = 0,
                attention_mask: Int[Tensor, "batch pos"] | None = None) -> Float[Tensor, "batch pos d_model"]:
        table = self._require()
        batch, pos = tokens.shape
        if attention_mask is None:
            ids = torch.arange(pos, device=table.weight.device).expand(batch, -1) + past_kv_pos_offset
            return table(ids)
        mask = attention_mask.to(table.weight.device).long()
        ids = (mask.cumsum(-1) - 1).clamp(min=0) + past_kv_pos_offset
        return table(ids) * mask[..., None].to(table.weight.dtype)   # padding: no position, zero (as TL)


class Unembed(nn.Module):
    """``model.unembed``: ``resid @ W_U + b_U`` ``[..., d_model] → [..., d_vocab]``, WITHOUT the final norm (apply
    ``model.ln_final`` first, or pass ``normalize=True``), plus the logit soft-capping of families that declare one,
    so ``unembed(ln_final(resid_post[-1]))`` reproduces the logits. ``W_U [d_model, d_vocab]``, ``b_U [d_vocab]``."""

    def __init__(self, lm_head: nn.Module, final_norm: nn.Module, d_model: int, softcap: float | None) -> None:
        super().__init__()
        self.__dict__.update(_head=lm_head, _norm=final_norm, _d_model=d_model, _softcap=softcap)

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._head.weight.T

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        bias = getattr(self._head, "bias", None)
        return bias if bias is not None else self._head.weight.new_zeros(self._head.weight.shape[0])

    def forward(self, resid: Float[Tensor, "... d_model"], normalize: bool = False) -> Float[Tensor, "... d_vocab"]:
        if resid.shape[-1] != self._d_model:
            raise VectorError(f"Residual has width {resid.shape[-1]}, this model's d_model is {self._d_model}.")
        head = self._head
        resid = resid.to(device=head.weight.device, dtype=head.weight.dtype)
        logits = head(self._norm(resid) if normalize else resid)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits


class HeadAnalysis:
    """Mixin: ``OV``, ``QK`` (``FactoredMatrix [n_layers, n_heads, d_model, d_model]``), ``all_head_labels`` and
    ``all_composition_scores`` (TransformerLens semantics, on the checkpoint's unfolded weights)."""

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V[l, h] @ W_O[l, h]``, the head's output for an input residual (GQA values expanded)."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q[l, h] @ W_K[l, h].T``, the head's bilinear attention score (before rotary, when rotary)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def all_head_labels(self) -> list[str]:
        """``["L0H0", "L0H1", ...]``, layer-major."""
        return [f"L{layer}H{head}" for layer in range(self.cfg.n_layers) for head in range(self.cfg.n_heads)]

    def all_composition_scores(self, mode: str) -> Float[Tensor, "n_layers n_heads n_layers n_heads"]:
        """How much each head's output feeds each LATER head's query (``"Q"``), key (``"K"``) or value (``"V"``):
        ``‖A B‖_F / (‖A‖_F ‖B‖_F)`` with ``A`` the earlier head's OV and ``B`` the later head's QK (``"Q"``), QKᵀ
        (``"K"``) or OV (``"V"``), zero where the second head is not in a later layer.
        ``[layer1, head1, layer2, head2]``."""
        if mode not in ("Q", "K", "V"):
            raise IncompatibleArgumentsError(f"mode={mode!r}: use 'Q', 'K' or 'V'.")
        left = self.OV
        right = {"Q": self.QK, "K": self.QK.T, "V": self.OV}[mode]
        n_layers, n_heads = self.cfg.n_layers, self.cfg.n_heads
        scores = torch.zeros(n_layers, n_heads, n_layers, n_heads, dtype=torch.float32)
        for l1 in range(n_layers):
            for l2 in range(l1 + 1, n_layers):
                for h1 in range(n_heads):
                    product = left[l1, h1] @ right[l2]   # FactoredMatrix [n_heads, d_model, d_model]
                    norms = product.norm().float() / (left[l1, h1].norm().float() * right[l2].norm().float())
                    scores[l1, h1, l2] = norms.cpu()
        return scores
