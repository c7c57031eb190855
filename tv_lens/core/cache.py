"""The cache ``run_with_cache`` returns: TransformerLens's ``ActivationCache`` with one change — applying a norm to a
stack of residual components (``apply_ln_to_stack``, hence ``decompose_resid`` / ``accumulated_resid`` /
``stack_head_results`` / ``get_full_resid_decomposition`` with ``apply_ln=True``) includes the norm's WEIGHT.

TransformerLens folds that weight into ``W_U`` (and the next layer's weights) when it loads a model; we keep the
checkpoint's weights exactly, so the weight is applied here instead. Then ``logit_attrs`` over a full decomposition
sums to the logit (minus the final norm's bias term ``b @ W_U`` and ``b_U``, which belong to no component), as it
does in TransformerLens after ``fold_ln``.
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice

from ..errors import UnsupportedModelError

_NORMALIZED = ("LN", "LNPre", "RMS", "RMSPre")


class Cache(ActivationCache):
    """``ActivationCache`` whose norm application includes the norm's weight (see the module docstring)."""

    def apply_ln_to_stack(self, residual_stack: Float[Tensor, "num_components *batch_and_pos d_model"],
                          layer: int | None = None, mlp_input: bool = False, pos_slice: Any = None,
                          batch_slice: Any = None, has_batch_dim: bool = True, recompute_ln: bool = False
                          ) -> Float[Tensor, "num_components *batch_and_pos_out d_model"]:
        """TransformerLens's ``apply_ln_to_stack`` (centre for LayerNorm, divide by the cached ``hook_scale``) times
        the target norm's weight ``w`` ``[d_model]``: each component's share of that norm's output, bias left out.

        ``layer``: the block whose input is meant (``None`` / ``-1`` / ``n_layers``: the final norm); ``mlp_input``:
        ``ln2`` instead of ``ln1``. ``recompute_ln=True`` at the final layer runs the whole norm on each component
        (weight and bias), as TransformerLens does."""
        out = super().apply_ln_to_stack(residual_stack, layer=layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                        batch_slice=batch_slice, has_batch_dim=has_batch_dim,
                                        recompute_ln=recompute_ln)
        final = layer is None or layer == -1 or layer == self.model.cfg.n_layers
        if self.model.cfg.normalization_type not in _NORMALIZED or (recompute_ln and final):
            return out
        return out * self._norm_weight(layer, mlp_input).to(device=out.device, dtype=out.dtype)

    def _norm_weight(self, layer: int | None, mlp_input: bool) -> Float[Tensor, " d_model"]:
        """The weight of the norm that reads the residual entering ``layer`` (``ln1`` / ``ln2``; the final norm)."""
        final = layer is None or layer == -1 or layer == self.model.cfg.n_layers
        norm = self.model.ln_final if final else getattr(self.model.blocks[layer], "ln2" if mlp_input else "ln1")
        return norm.w.detach()

    def _stack_neuron_results_apply_ln_projected(self, layer: int, pos_slice: Any, neuron_slice: Any,
                                                 project_2d: Tensor, mlp_input: bool = False) -> Tensor:
        """TransformerLens's fused norm-and-project path of ``stack_neuron_results``, with the norm's weight folded
        into the projection (``(x / s * w) @ p = (x / s) @ (w ⊙ p)``), so it agrees with ``apply_ln_to_stack``."""
        weight = self._norm_weight(layer, mlp_input).to(device=project_2d.device, dtype=project_2d.dtype)
        return super()._stack_neuron_results_apply_ln_projected(layer, pos_slice, neuron_slice,
                                                                weight[:, None] * project_2d, mlp_input=mlp_input)

    def _check_additive(self, what: str) -> None:
        """Per-head and per-neuron shares add up to the residual only where the block adds its attention / MLP
        output as is; sandwich norms (Gemma 3) normalise that output first."""
        adapter = self.model.adapter
        if adapter.attn_out != adapter.attention or adapter.mlp_out != ("mlp",):
            raise UnsupportedModelError(
                f"{what}: {self.model.cfg.family} normalises each attention / MLP output before adding it to the "
                "residual (sandwich norms), so per-head and per-neuron shares do not add up to it. Use "
                "decompose_resid (one attn_out / mlp_out per layer, which do) or read attn.hook_z / mlp.hook_post.")

    def stack_head_results(self, *args: Any, **kwargs: Any) -> Any:
        """TransformerLens's; refused where head results do not add up to the residual (see ``_check_additive``)."""
        self._check_additive("stack_head_results")
        return super().stack_head_results(*args, **kwargs)

    def stack_neuron_results(self, *args: Any, **kwargs: Any) -> Any:
        """TransformerLens's; refused where neuron results do not add up to the residual."""
        self._check_additive("stack_neuron_results")
        return super().stack_neuron_results(*args, **kwargs)

    def apply_slice_to_batch_dim(self, batch_slice: Slice | Any) -> Cache:
        """TransformerLens's, keeping this class (and every entry with a batch axis sliced)."""
        sliced = super().apply_slice_to_batch_dim(batch_slice)
        return Cache(sliced.cache_dict, self.model, has_batch_dim=sliced.has_batch_dim)
