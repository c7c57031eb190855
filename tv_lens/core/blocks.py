"""The hook-point tree (``blocks[l].attn.hook_z``, ``ln_final.hook_scale``...) built from the site table, with each
block's weights in TransformerLens shapes as VIEWS of the HF weights (GQA keys/values expanded to every query head,
as TransformerLens exposes them; the unexpanded ones are ``_W_K`` / ``_W_V``).

The HF modules are kept out of ``nn.Module`` registration (``__dict__``), so ``HookedRootModule.setup`` sees only
hook points and ``state_dict`` stays the HF model's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .sites import SITES, BridgedHookPoint


def as_in_out(module: nn.Module) -> Tensor:
    """The weight of an ``nn.Linear`` or a GPT-2 ``Conv1D`` as ``[in, out]`` (a view)."""
    if isinstance(module, nn.Linear):
        return module.weight.T
    return module.weight   # Conv1D stores [in, out]


def _missing(family: str, what: str, field: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{what} has no meaning for the {family} adapter (Adapter.{field} names no module "
                                 f"of this model); set Adapter.{field} in tv_lens/adapters/{family}.py if it has one.")


class AttentionBlock(nn.Module):
    """``blocks[l].attn``: per-head hook points and weights ``W_Q/W_K/W_V [head, d_model, d_head]``,
    ``W_O [head, d_head, d_model]``, biases ``b_Q/b_K/b_V [head, d_head]`` and ``b_O [d_model]`` (zeros where the
    projection has no bias, as in TransformerLens)."""

    def __init__(self, mods: SimpleNamespace, layer: int, cfg, family: str, suffixes: list[str]) -> None:
        super().__init__()
        for suffix in suffixes:
            setattr(self, suffix, BridgedHookPoint())
        self.__dict__.update(_mods=mods, _layer=layer, _cfg=cfg, _family=family)

    def _proj(self, which: str) -> tuple[Tensor, Tensor | None, int]:
        """``[d_model, heads * d_head]`` weight, bias, number of heads of q/k/v."""
        cfg, layer = self._cfg, self._layer
        n = cfg.n_heads if which == "q" else (cfg.n_key_value_heads or cfg.n_heads)
        module = getattr(self._mods, f"{which}_proj")[layer]
        if module is not None:
            return as_in_out(module), module.bias, n
        fused = self._mods.qkv_proj[layer]
        if fused is None:
            raise _missing(self._family, f"W_{which.upper()}", f"{which}_proj")
        part = "qkv".index(which)
        d = cfg.d_model
        bias = None if fused.bias is None else fused.bias[part * d:(part + 1) * d]
        return as_in_out(fused)[:, part * d:(part + 1) * d], bias, n

    def _w(self, which: str) -> Float[Tensor, "head d_model d_head"]:
        weight, _, n = self._proj(which)
        return weight.unflatten(1, (n, self._cfg.d_head)).permute(1, 0, 2)

    def _b(self, which: str) -> Float[Tensor, "head d_head"]:
        weight, bias, n = self._proj(which)
        if bias is None:
            return weight.new_zeros(n, self._cfg.d_head)
        return bias.unflatten(0, (n, self._cfg.d_head))

    def _expand(self, x: Tensor) -> Tensor:
        repeat = self._cfg.n_heads // x.shape[0]
        return x if repeat == 1 else x.repeat_interleave(repeat, dim=0)

    W_Q = property(lambda self: self._w("q"))
    _W_K = property(lambda self: self._w("k"))
    _W_V = property(lambda self: self._w("v"))
    W_K = property(lambda self: self._expand(self._w("k")))
    W_V = property(lambda self: self._expand(self._w("v")))
    b_Q = property(lambda self: self._b("q"))
    _b_K = property(lambda self: self._b("k"))
    _b_V = property(lambda self: self._b("v"))
    b_K = property(lambda self: self._expand(self._b("k")))
    b_V = property(lambda self: self._expand(self._b("v")))

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        """``hook_result[..., h, :] = hook_z[..., h, :] @ W_O[h]`` (a view of the HF output projection)."""
        cfg = self._cfg
        module = self._mods.o_proj[self._layer] if self._mods.o_proj else None
        if module is None:
            raise _missing(self._family, "W_O", "o_proj")
        weight = as_in_out(module)
        if tuple(weight.shape) != (cfg.n_heads * cfg.d_head, cfg.d_model):
            raise UnsupportedModelError(
                f"The output projection of layer {self._layer} has a weight of shape {tuple(weight.T.shape)}, not "
                "[d_model, n_heads * d_head] (a quantized layer?); hook_result needs a dense one. Read hook_z.")
        return weight.unflatten(0, (cfg.n_heads, cfg.d_head))

    @property
    def b_O(self) -> Float[Tensor, " d_model"]:
        module = self._mods.o_proj[self._layer] if self._mods.o_proj else None
        if module is None:
            raise _missing(self._family, "b_O", "o_proj")
        return module.bias if module.bias is not None else as_in_out(module).new_zeros(self._cfg.d_model)


class MLPBlock(nn.Module):
    """``blocks[l].mlp``: ``hook_post`` (the down projection's input) and ``W_in/W_gate [d_model, d_mlp]``,
    ``W_out [d_mlp, d_model]``, ``b_in [d_mlp]``, ``b_out [d_model]``."""

    def __init__(self, mods: SimpleNamespace, layer: int, family: str, suffixes: list[str]) -> None:
        super().__init__()
        for suffix in suffixes:
            setattr(self, suffix, BridgedHookPoint())
        self.__dict__.update(_mods=mods, _layer=layer, _family=family)

    def _module(self, field: str) -> nn.Module:
        module = getattr(self._mods, field)[self._layer]
        if module is None:
            raise _missing(self._family, {"mlp_in": "W_in", "mlp_gate": "W_gate", "mlp_down": "W_out"}[field], field)
        return module

    W_in = property(lambda self: as_in_out(self._module("mlp_in")))
    W_gate = property(lambda self: as_in_out(self._module("mlp_gate")))
    W_out = property(lambda self: as_in_out(self._module("mlp_down")))

    @property
    def b_in(self) -> Tensor:
        module = self._module("mlp_in")
        return module.bias if module.bias is not None else as_in_out(module).new_zeros(as_in_out(module).shape[1])

    @property
    def b_out(self) -> Tensor:
        module = self._module("mlp_down")
        return module.bias if module.bias is not None else as_in_out(module).new_zeros(as_in_out(module).shape[1])


class Block(nn.Module):
    """``blocks[l]``: residual hook points, ``ln1``, ``attn``, ``ln2`` and ``mlp``."""

    def __init__(self, mods: SimpleNamespace, layer: int, cfg, family: str, available: Callable[[str], bool]) -> None:
        super().__init__()
        per_layer = [s.suffix for s in SITES if s.per_layer and available(s.suffix)]
        attn = [s.split(".", 1)[1] for s in per_layer if s.startswith("attn.")]
        mlp = [s.split(".", 1)[1] for s in per_layer if s.startswith("mlp.")]
        for suffix in per_layer:   # registration order = forward order = hook_names() order
            for norm in ("ln1", "ln2"):
                if suffix.startswith(f"{norm}.") and norm not in self._modules:
                    setattr(self, norm, Norm(getattr(mods, norm)[layer],
                                             [s.split(".", 1)[1] for s in per_layer if s.startswith(f"{norm}.")]))
            if suffix.startswith("attn.") or (suffix == "hook_attn_out" and not attn):
                if "attn" not in self._modules:
                    self.attn = AttentionBlock(mods, layer, cfg, family, attn)
            if suffix.startswith("mlp.") or (suffix == "hook_mlp_out" and not mlp):
                if "mlp" not in self._modules:
                    self.mlp = MLPBlock(mods, layer, family, mlp)
            if "." not in suffix:
                setattr(self, suffix, BridgedHookPoint())
        if "attn" not in self._modules:
            self.attn = AttentionBlock(mods, layer, cfg, family, attn)
        if "mlp" not in self._modules:
            self.mlp = MLPBlock(mods, layer, family, mlp)


class Norm(nn.Module):
    """A norm (``ln_final``, ``blocks[l].ln1`` / ``ln2``): callable like TransformerLens's (``model.ln_final(x)`` runs
    the model's own norm, and the hooks attached to its ``hook_scale`` / ``hook_normalized`` fire), with ``w`` (and
    ``b`` for LayerNorm; zeros for RMSNorm)."""

    def __init__(self, norm: nn.Module, suffixes: Sequence[str] = ("hook_scale", "hook_normalized")) -> None:
        super().__init__()
        for suffix in suffixes:
            setattr(self, suffix, BridgedHookPoint())
        self.__dict__["_norm"] = norm

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        weight = getattr(self._norm, "weight", None)
        if weight is not None:
            x = x.to(device=weight.device, dtype=weight.dtype)
        return self._norm(x)

    @property
    def w(self) -> Float[Tensor, " d_model"]:
        """The weight the norm's output is multiplied by, as it acts (Gemma's ``1 + weight`` included)."""
        weight = self._norm.weight
        return 1 + weight if "gemma" in type(self._norm).__name__.lower() else weight

    @property
    def b(self) -> Tensor:
        bias = getattr(self._norm, "bias", None)
        return bias if bias is not None else torch.zeros_like(self._norm.weight)
