"""Per-patch views of an image: one value per image token, per layer, placed on the picture by its geometry.

Four views, each returning an :class:`ImageMap` (a tensor ``[layer, image_token]`` or ``[layer, head,
image_token]``, the :class:`~tv_lens.image_geometry.ImageGeometry` of the image, and a tidy frame):

- :func:`attention_map`: attention from a named position (default ``"query_delimiter"``) to each image patch, per
  layer and head or averaged / summed over heads, read from the cache (``attn.hook_pattern``; eager attention);
- :func:`lens_map`: the logit lens per image token: the top-k decoded tokens and the probability of given words
  (a label, a task word) for every patch across layers;
- :func:`patching_map`: activation or attribution patching over the image's patches (the grids of
  :mod:`tv_lens.patching`: which regions, at which layers, carry the answer);
- :func:`task_vector_effect`: a map with and without a task-vector patch at the chosen layer.

Plots are in :mod:`tv_lens.plot_image`; these functions only compute data. Only tokens with a place in the picture
(``kind == "patch"``) are mapped: image-newline and CLS tokens are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from . import hooks as _hooks
from . import positions as _positions
from .errors import IncompatibleArgumentsError, InputError
from .image_geometry import ImageGeometry, image_geometry
from .vectors import TaskVector

HEAD_REDUCTIONS = ("mean", "sum")


@dataclass
class ImageMap:
    """One value per image patch, per layer (and head), with the image's geometry.

    Attributes:
        values: ``[layer, image_token]``, or ``[layer, head, image_token]`` when heads are kept; ``image_token``
            follows ``geometry.patches`` (token order).
        layers: the layer of each row of ``values``.
        geometry: where each image token sits (``geometry.patches`` has one row per column of ``values``).
        what: what the values are (``"attention from query_delimiter"``, ``"p(Paris)"``, ``"recovery"``...).
        heads: the heads of the head axis, or ``None``.
        decoded: optional ``[layer][image_token]`` strings shown on hover (the logit lens's top-1 token).
        top_k: optional tidy frame of the top-k decodings (:func:`lens_map`).
    """

    values: Float[Tensor, "layer *head image_token"]
    layers: list[int]
    geometry: ImageGeometry
    what: str
    heads: list[int] | None = None
    decoded: list[list[str]] | None = None
    top_k: pd.DataFrame | None = field(default=None, repr=False)

    def at(self, layer: int, head: int | None = None) -> Float[Tensor, " image_token"]:
        """The values of one layer (and head): ``[image_token]``."""
        if layer not in self.layers:
            raise InputError(f"Layer {layer} is not in this map; its layers are {self.layers}.")
        row = self.values[self.layers.index(layer)]
        if self.heads is None:
            if head is not None:
                raise InputError("This map has no head axis (heads were averaged or summed).")
            return row
        if head is None or head not in self.heads:
            raise InputError(f"Say which head (one of {self.heads}).")
        return row[self.heads.index(head)]

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, [head,] image token): the token's geometry columns, ``value`` and ``decoded``."""
        patches = self.geometry.patches
        rows = []
        for li, layer in enumerate(self.layers):
            for hi, head in enumerate(self.heads if self.heads is not None else [None]):
                values = self.values[li] if self.heads is None else self.values[li, hi]
                block = patches.copy()
                block.insert(0, "layer", layer)
                if self.heads is not None:
                    block.insert(1, "head", head)
                block["value"] = values.detach().cpu().double().numpy()
                if self.decoded is not None:
                    block["decoded"] = self.decoded[li]
                rows.append(block)
        frame = pd.concat(rows, ignore_index=True)
        frame["what"] = self.what
        return frame

    def __repr__(self) -> str:
        heads = f" × {len(self.heads)} heads" if self.heads is not None else ""
        return (f"ImageMap({self.what!r}, {len(self.layers)} layers{heads} × {self.values.shape[-1]} image tokens, "
                f"{self.geometry.family} image[{self.geometry.image_index}] "
                f"{self.geometry.image_size[0]}×{self.geometry.image_size[1]}px)")


# ------------------------------------------------------------------------------------------------ shared steps
def _layers(model, layers: Sequence[int] | None) -> list[int]:
    from .errors import LayerOutOfRangeError

    n = model.cfg.n_layers
    out = list(range(n)) if layers is None else [int(layer) + n if int(layer) < 0 else int(layer) for layer in layers]
    bad = [layer for layer in out if not 0 <= layer < n]
    if bad or not out:
        raise LayerOutOfRangeError(f"Layers {bad or '[]'}: this model has layers 0..{n - 1}.")
    return out


def _one_prompt(model, prompt: Any, images: Any) -> dict:
    inputs = model.as_inputs(prompt, images=images)
    if inputs["input_ids"].shape[0] != 1:
        raise InputError(f"An image map reads one prompt; got a batch of {inputs['input_ids'].shape[0]}.")
    return inputs


def _geometry(model, prompt: Any, images: Any, image: int) -> ImageGeometry:
    geometries = image_geometry(model, prompt, images=images)
    if not -len(geometries) <= image < len(geometries):
        raise InputError(f"image={image}, but the prompt has {len(geometries)} image(s).")
    return geometries[image]


def _position(model, inputs: dict, spec: Any) -> int:
    index = _positions.resolve(spec, model.positions(inputs))
    if index.ndim != 1:
        raise InputError(f"Position {spec!r} is a span of {index.shape[1]} tokens; name one token (e.g. 'last').")
    return int(index[0])


# ------------------------------------------------------------------------------------------------ views
@torch.no_grad()
def attention_map(model, prompt: Any, images: Any = None, source: Any = "query_delimiter",
                  layers: Sequence[int] | None = None, heads: str | Sequence[int] = "mean", image: int = 0,
                  fwd_hooks: Sequence = ()) -> ImageMap:
    """Attention from one position to each patch of an image, per layer.

    Args:
        model: a multimodal :class:`~tv_lens.HookedMultimodalModel` loaded with eager attention.
        prompt: one prompt (a :class:`~tv_lens.prompts.Prompt`, or text with ``images=``).
        source: the attending position (default ``"query_delimiter"``; ``"last"``, an int...).
        layers: default all.
        heads: ``"mean"`` / ``"sum"`` over heads, or head indices to keep (values ``[layer, head, image_token]``).
        image: which image of the prompt.
        fwd_hooks: hooks active during the run (e.g. a task-vector patch).

    Returns:
        :class:`ImageMap` with ``values[l, i] = pattern[l][0, head(s), source, patch_token_i]`` (only that row of
        each layer's pattern is kept while the model runs, not the ``[head, pos, pos]`` pattern).

    Raises:
        HookNameError: no ``attn.hook_pattern`` (not eager attention). ImageLayoutError: no spatial layout.
    """
    if isinstance(heads, str) and heads not in HEAD_REDUCTIONS:
        raise InputError(f"heads={heads!r}: use 'mean', 'sum' or a list of head indices.")
    layers = _layers(model, layers)
    inputs = _one_prompt(model, prompt, images)
    geometry = _geometry(model, prompt, images, image)
    query = _position(model, inputs, source)
    keys = geometry.patch_tokens
    if int(keys.max()) > query:
        raise IncompatibleArgumentsError(f"Position {source!r} ({query}) comes before the image's tokens "
                                         f"({int(keys.min())}..{int(keys.max())}); causal attention cannot see them.")
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    rows: dict[str, Tensor] = {}

    def keep_row(pattern: Tensor, hook: Any) -> None:
        """Keep only the source's row at the image tokens (a whole pattern is ``[head, pos, pos]`` per layer)."""
        rows[hook.name] = pattern[0, :, query][:, keys.to(pattern.device)].float().cpu()

    model.run_with_hooks(inputs, fwd_hooks=list(fwd_hooks) + [(name, keep_row) for name in names])
    pattern = torch.stack([rows[name] for name in names])          # [layer, head, image_token]
    if isinstance(heads, str):
        values, kept = (pattern.mean(1) if heads == "mean" else pattern.sum(1)), None
    else:
        kept = [int(h) for h in heads]
        if not kept or any(not 0 <= h < pattern.shape[1] for h in kept):
            raise InputError(f"heads {kept}: this model has heads 0..{pattern.shape[1] - 1}.")
        values = pattern[:, kept]
    label = f"attention from {source}" + (f" ({heads} over heads)" if isinstance(heads, str) else "")
    return ImageMap(values, layers, geometry, label, heads=kept)


@torch.no_grad()
def lens_map(model, prompt: Any, images: Any = None, words: Any = None, layers: Sequence[int] | None = None,
             k: int = 3, image: int = 0, hook: str = "resid_post", fwd_hooks: Sequence = ()) -> ImageMap:
    """The logit lens on every image patch, across layers.

    Args:
        words: strings / ids / a :class:`~tv_lens.lens.TokenSet` whose probability is mapped (summed, with the
            lens's space-variant rule); ``None`` maps the top-1 token's probability.
        k: how many top tokens to decode per patch and layer (``top_k`` frame; the top-1 is shown on hover).
        hook: the residual read (``"resid_post"``: the output of each layer; ``"resid_pre"``, ``"resid_mid"``).

    Returns:
        :class:`ImageMap` ``[layer, image_token]``: ``p(words)`` (or the top-1 probability) of
        ``ln_final → unembed`` applied to ``blocks.{l}.hook_{hook}`` at each patch token; ``decoded`` the top-1
        tokens; ``top_k`` a tidy frame (layer, token, rank, decoded, prob).
    """
    from . import lens as _lens

    layers = _layers(model, layers)
    inputs = _one_prompt(model, prompt, images)
    geometry = _geometry(model, prompt, images, image)
    tokens = geometry.patch_tokens.tolist()
    names = [f"blocks.{layer}.hook_{hook}" for layer in layers]
    _, cache = model.run_with_cache(inputs, names_filter=names, positions=tokens, fwd_hooks=list(fwd_hooks))
    resid = torch.stack([cache[name][0] for name in names])      # [layer, image_token, d_model]
    top = _lens.top_k(model, resid, k=k)
    if words is None:
        values, what = top.probs[..., 0].cpu(), "top-1 probability"
    else:
        values = _lens.token_probability(model, resid, words).cpu()
        what = f"p({words if isinstance(words, str) else ', '.join(map(str, words))})"
    frame = top.to_frame(dims=("layer_index", "image_token")).rename(columns={"token": "decoded"})
    frame.insert(0, "layer", [layers[i] for i in frame.pop("layer_index")])
    frame.insert(2, "token", [tokens[i] for i in frame["image_token"]])
    decoded = [[row[0] for row in layer_tokens] for layer_tokens in top.tokens]
    return ImageMap(values.float(), layers, geometry, what, decoded=decoded, top_k=frame)


def patching_map(model, clean: Any, corrupted: Any, metric: Any, *, method: str = "exact",
                 hook: str = "resid_pre", layers: Sequence[int] | None = None, image: int = 0,
                 **patching_kwargs: Any):
    """Activation (``method="exact"``) or attribution patching over the patches of an image.

    ``clean`` and ``corrupted`` are one prompt each whose images have the same token layout (e.g. the same text
    with two images of the same size): each image token of the corrupted run gets the clean activation, one patch
    and layer at a time (:func:`tv_lens.patching.activation_patching` with ``positions=`` the patch tokens).

    Returns:
        ``(ImageMap, PatchingResult)``: the map holds ``recovery`` ``[layer, image_token]`` (0 = corrupted,
        1 = clean) on the CLEAN prompt's geometry and image (the token layout is the corrupted one's too); the
        result is the grid itself.
    """
    from . import patching as _patching

    runs = {"exact": _patching.activation_patching, "attribution": _patching.attribution_patching}
    if method not in runs:
        raise InputError(f"method={method!r}: use 'exact' or 'attribution'.")
    geometry = _geometry(model, corrupted, None, image)
    clean_geometry = _geometry(model, clean, None, image)
    tokens = geometry.patch_tokens.tolist()
    if clean_geometry.patch_tokens.tolist() != tokens:
        raise InputError("The clean and corrupted images do not have the same token layout (sizes or positions "
                         "differ); use images of the same size at the same place in both prompts.")
    result = runs[method](model, clean, corrupted, metric, hook=hook, layers=layers, positions=tokens,
                          **patching_kwargs)
    values = result.recovery[:, :, 0].float()
    # drawn on the CLEAN image: a cell says how much of the answer that clean patch brings back
    return ImageMap(values, list(result.layers), clean_geometry, f"recovery ({method} {hook})"), result


@dataclass
class TaskVectorEffect:
    """A map without and with a task-vector patch.

    Attributes:
        before, after: the two :class:`ImageMap` s (same layers and patches).
        layer: where the vector was written; at: the position; mode: ``"replace"`` or ``"add"``.
    """

    before: ImageMap
    after: ImageMap
    layer: int
    at: Any
    mode: str

    @property
    def difference(self) -> ImageMap:
        """``after - before`` as an :class:`ImageMap`."""
        b = self.before
        return ImageMap(self.after.values - b.values, b.layers, b.geometry, f"Δ {b.what} (patch at layer "
                        f"{self.layer}, {self.at})", heads=b.heads, decoded=self.after.decoded)

    def to_frame(self) -> pd.DataFrame:
        """``before`` and ``after`` frames stacked, with a ``condition`` column."""
        return pd.concat([self.before.to_frame().assign(condition="without patch"),
                          self.after.to_frame().assign(condition="with patch")], ignore_index=True)

    def __repr__(self) -> str:
        delta = self.difference.values
        return (f"TaskVectorEffect({self.before.what!r}, {self.mode} at layer {self.layer}, {self.at!r}: "
                f"mean |Δ| {float(delta.abs().mean()):.4g}, max |Δ| {float(delta.abs().max()):.4g})")


def task_vector_effect(model, prompt: Any, vector: TaskVector | Tensor, layer: int, images: Any = None,
                       view: str = "attention", at: Any = "query_delimiter", mode: str = "replace",
                       **view_kwargs: Any) -> TaskVectorEffect:
    """The same map without and with a task vector written into ``blocks.{layer}.hook_resid_post`` at ``at``.

    Args:
        vector: a :class:`~tv_lens.TaskVector` (its ``layer`` row is used) or a ``[d_model]`` tensor.
        view: ``"attention"`` (:func:`attention_map`, ``source`` defaults to ``"query_delimiter"``) or ``"lens"``
            (:func:`lens_map`).
        mode: ``"replace"`` (the paper's patch) or ``"add"``.
        **view_kwargs: passed to the view (``layers``, ``heads``, ``words``, ``k``, ``image``...).

    Raises:
        IncompatibleArgumentsError: a patch that cannot change the map: written after every image token for the
            lens view, or after the attending position for the attention view (causal attention), or an unknown
            view / mode.
        PatchNotFiredError: the patch never acted.
    """
    views = {"attention": attention_map, "lens": lens_map}
    if view not in views or mode not in ("replace", "add"):
        raise IncompatibleArgumentsError(f"view={view!r}, mode={mode!r}: use view 'attention' or 'lens' and mode "
                                         "'replace' or 'add'.")
    layer = _layers(model, [layer])[0]
    values = vector[layer] if isinstance(vector, TaskVector) else torch.as_tensor(vector)
    inputs = _one_prompt(model, prompt, images)
    where = _positions.resolve(at, model.positions(inputs)).flatten()
    geometry = _geometry(model, prompt, images, view_kwargs.get("image", 0))
    if view == "lens" and int(where.min()) > int(geometry.patch_tokens.max()):
        raise IncompatibleArgumentsError(
            f"A patch at {at!r} (token {int(where.min())}) comes after every image token, so it cannot change "
            "what the image tokens decode to (causal attention). Map the attention from a later position "
            "(view='attention'), or write the vector at the image (at='image[0]', mode='add').")
    source = view_kwargs.get("source", "query_delimiter")
    if view == "attention" and int(where.min()) > _position(model, inputs, source):
        raise IncompatibleArgumentsError(f"A patch at {at!r} comes after the attending position {source!r}; "
                                         "it cannot change that position's attention.")
    patch = (_hooks.patch if mode == "replace" else _hooks.add)(values, at=at)
    before = views[view](model, prompt, images=images, **view_kwargs)
    after = views[view](model, prompt, images=images, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", patch)],
                        **view_kwargs)
    _hooks.check_fired([patch])
    return TaskVectorEffect(before, after, layer, at, mode)


__all__ = ["ImageMap", "TaskVectorEffect", "attention_map", "lens_map", "patching_map", "task_vector_effect"]
