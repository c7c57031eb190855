"""The hook sites, as data: one frozen table says, for every hook-point name, which adapter module it reads, whether
before (``pre``: the module's input) or after (``post``: its output), whether a hook may write it, and whether it is
split per attention head. Forward AND backward wiring come from this table: a hook point is bridged to its HF module
(by one PyTorch hook per *bridge*) exactly while some forward or backward hook function is attached to it.

A bridge is ``(bridge kind, layer)``; several sites can share one (``hook_embed``, ``hook_resid_pre`` and the store
that ``hook_resid_mid`` needs are one pre-hook on the decoder layer). :data:`BRIDGES` maps each kind to the function
that installs it; adding a hook point is a row in :data:`SITES` (plus, for a new kind of bridge, one installer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from ..errors import IncompatibleArgumentsError, UnsupportedModelError

if TYPE_CHECKING:
    from ..model import HookedMultimodalModel


@dataclass(frozen=True)
class Site:
    """One row of the site table.

    Attributes:
        suffix: the hook-point name (``blocks.{l}.`` is prefixed for per-layer sites).
        module: the adapter field naming the HF module the site reads (``layers``, ``attn_out``, ``o_proj``...).
        when: ``"pre"`` (the module's input) or ``"post"`` (its output).
        access: ``"rw"`` (hooks may return a replacement) or ``"r"`` (read-only; a replacement raises).
        per_head: the tensor carries a head axis (``[batch, pos, head, d_head]`` or a pattern).
        bridge: the bridge kind that serves it (one PyTorch hook per ``(bridge, layer)``).
        per_layer: the site exists once per decoder layer.
        shape: the tensor's shape, for the docs.
    """

    suffix: str
    module: str
    when: str
    access: str
    per_head: bool
    bridge: str
    per_layer: bool
    shape: str


SITES: tuple[Site, ...] = (
    Site("hook_tokens", "embed_tokens", "pre", "rw", False, "tokens", False, "batch pos"),
    Site("hook_embed", "layers", "pre", "rw", False, "layer_pre", False, "batch pos d_model"),
    Site("hook_pos_embed", "pos_embed", "post", "rw", False, "pos_embed", False, "batch pos d_model"),
    Site("hook_image_features", "image_features", "post", "rw", False, "image_features", False,
         "n_images image_pos d_model"),
    Site("hook_resid_pre", "layers", "pre", "rw", False, "layer_pre", True, "batch pos d_model"),
    Site("ln1.hook_scale", "ln1", "post", "r", False, "ln1", True, "batch pos 1"),
    Site("ln1.hook_normalized", "ln1", "post", "rw", False, "ln1", True, "batch pos d_model"),
    Site("attn.hook_q", "q_proj", "post", "rw", True, "q", True, "batch pos head d_head"),
    Site("attn.hook_k", "k_proj", "post", "rw", True, "k", True, "batch pos kv_head d_head"),
    Site("attn.hook_v", "v_proj", "post", "rw", True, "v", True, "batch pos kv_head d_head"),
    Site("attn.hook_attn_scores", "attention", "post", "rw", True, "attn_fn", True, "batch head query_pos key_pos"),
    Site("attn.hook_pattern", "attention", "post", "rw", True, "attn_fn", True, "batch head query_pos key_pos"),
    Site("attn.hook_z", "o_proj", "pre", "rw", True, "z", True, "batch pos head d_head"),
    Site("attn.hook_result", "o_proj", "post", "rw", True, "result", True, "batch pos head d_model"),
    Site("hook_attn_out", "attn_out", "post", "rw", False, "attn_out", True, "batch pos d_model"),
    Site("hook_resid_mid", "attn_out", "post", "rw", False, "attn_out", True, "batch pos d_model"),
    Site("hook_mlp_in", "ln2", "pre", "rw", False, "mlp_in", True, "batch pos d_model"),
    Site("ln2.hook_scale", "ln2", "post", "r", False, "ln2", True, "batch pos 1"),
    Site("ln2.hook_normalized", "ln2", "post", "rw", False, "ln2", True, "batch pos d_model"),
    Site("mlp.hook_pre", "mlp_pre", "post", "rw", False, "mlp_pre", True, "batch pos d_mlp"),
    Site("mlp.hook_pre_linear", "mlp_in", "post", "rw", False, "mlp_pre_linear", True, "batch pos d_mlp"),
    Site("mlp.hook_post", "mlp_down", "pre", "rw", False, "mlp_post", True, "batch pos d_mlp"),
    Site("hook_mlp_out", "mlp_out", "post", "rw", False, "mlp_out", True, "batch pos d_model"),
    Site("hook_resid_post", "layers", "post", "rw", False, "layer_post", True, "batch pos d_model"),
    Site("ln_final.hook_scale", "final_norm", "post", "r", False, "final_norm", False, "batch pos 1"),
    Site("ln_final.hook_normalized", "final_norm", "post", "rw", False, "final_norm", False, "batch pos d_model"),
)

SITE_BY_SUFFIX = {site.suffix: site for site in SITES}
SEQUENCE_FREE = frozenset({"hook_image_features"})


def site_table_markdown() -> str:
    """The site table as a Markdown table (docs/concepts.md shows it)."""
    rows = ["| hook point | adapter module | reads | hooks may | per head | shape |",
            "|---|---|---|---|---|---|"]
    for s in SITES:
        name = f"blocks.{{l}}.{s.suffix}" if s.per_layer else s.suffix
        rows.append(f"| `{name}` | `{s.module}` | {'input' if s.when == 'pre' else 'output'} | "
                    f"{'read, replace' if s.access == 'rw' else 'read'} | {'yes' if s.per_head else 'no'} | "
                    f"`[{s.shape}]` |")
    return "\n".join(rows)


def split_name(name: str) -> tuple[Site, int | None]:
    """``"blocks.3.attn.hook_z"`` → (its Site, 3); ``"ln_final.hook_scale"`` → (Site, None)."""
    if name.startswith("blocks."):
        _, layer, suffix = name.split(".", 2)
        return SITE_BY_SUFFIX[suffix], int(layer)
    return SITE_BY_SUFFIX[name], None


class BridgedHookPoint(HookPoint):
    """A HookPoint that tells its model when hook functions come and go, so that the model bridges it to the HF
    module only while needed. Forward AND backward hook functions count."""

    def __init__(self) -> None:
        super().__init__()
        self._site_changed: Callable[[BridgedHookPoint], None] | None = None
        self._check_attach: Callable[[], None] | None = None   # raises when this point cannot run here
        self._paused: Callable[[BridgedHookPoint], bool] | None = None   # True: hook functions sit this call out

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if self._paused is not None and self._paused(self):   # generate(hooks_on="prompt"), start_at_layer
            return x
        return super().__call__(x, *args, **kwargs)

    def add_hook(self, *args, **kwargs):
        if self._check_attach is not None:
            self._check_attach()
        handle = super().add_hook(*args, **kwargs)
        if self._site_changed is not None:
            self._site_changed(self)
        return handle

    def remove_hooks(self, *args, **kwargs) -> None:
        had_hooks = bool(self.fwd_hooks or self.bwd_hooks)
        super().remove_hooks(*args, **kwargs)
        if had_hooks and self._site_changed is not None:   # resetting a point with no hooks changes nothing
            self._site_changed(self)

    @property
    def active(self) -> bool:
        return bool(self.fwd_hooks or self.bwd_hooks)


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, tensor: Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _read_only(point: HookPoint, value: Tensor, fix: str) -> None:
    new = point(value)
    if new is not None and new is not value and not point.bwd_hooks:
        raise IncompatibleArgumentsError(f"{point.name} can be read, not patched: {fix}")


def _bridge(model: HookedMultimodalModel, site: Site) -> str:
    """A site's bridge kind on this model: with a learned position table (GPT-2), ``hook_embed`` is the token
    embedding alone and ``hook_pos_embed`` the position embedding (TransformerLens semantics); otherwise
    ``hook_embed`` is the residual entering block 0 (after image features are merged in)."""
    if site.suffix == "hook_embed" and model._mods.pos_embed is not None:
        return "embed"
    return site.bridge


def _points(model: HookedMultimodalModel, bridge: str, layer: int | None) -> list[BridgedHookPoint]:
    """The hook points a bridge serves, in the order the forward pass reaches them."""
    out = []
    for site in SITES:
        if _bridge(model, site) != bridge:
            continue
        if site.suffix == "hook_embed" and bridge == "layer_pre" and layer != 0:
            continue
        name = f"blocks.{layer}.{site.suffix}" if site.per_layer else site.suffix
        point = model.hook_dict.get(name)
        if point is not None:
            out.append(point)
    return out


def _active(point: HookPoint | None) -> bool:
    return point is not None and point.active


# ---------------------------------------------------------------------------------------------- bridge installers
def _layer_pre(model: HookedMultimodalModel, layer: int) -> list:
    points = [p for p in _points(model, "layer_pre", layer)]
    mid = model.hook_dict.get(f"blocks.{layer}.hook_resid_mid")

    def pre_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        new = hidden
        for point in points:
            if point.active:
                new = point(new)
        if _active(mid):
            model._resid_pre_store[layer] = new
        if new is hidden:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return [model._mods.layers[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)]


def _attn_out(model: HookedMultimodalModel, layer: int) -> list:
    out_point = model.hook_dict[f"blocks.{layer}.hook_attn_out"]
    mid = model.hook_dict.get(f"blocks.{layer}.hook_resid_mid")

    def attn_hook(module, args, output):
        out = _first(output)
        new = out_point(out) if out_point.active else out
        if _active(mid):
            resid_pre = model._resid_pre_store.pop(layer)
            resid_mid = resid_pre + new
            patched = mid(resid_mid)
            if patched is not resid_mid:
                new = patched - resid_pre   # the layer adds this output to resid_pre itself
        return None if new is out else _replace_first(output, new)

    return [model._mods.attn_out[layer].register_forward_hook(attn_hook)]


def _output_bridge(module: nn.Module, point: HookPoint, to_site=None, from_site=None) -> list:
    def output_hook(module, args, output):
        out = _first(output)
        value = out if to_site is None else to_site(out)
        new = point(value)
        if new is value:
            return None
        return _replace_first(output, new if from_site is None else from_site(new))

    return [module.register_forward_hook(output_hook)]


def _input_bridge(module: nn.Module, point: HookPoint, to_site=None, from_site=None) -> list:
    def input_hook(module, args):
        if not args:
            raise UnsupportedModelError(f"{point.name}: the module was called without a positional input; this "
                                        "hook point cannot read it.")
        value = args[0] if to_site is None else to_site(args[0])
        new = point(value)
        if new is value:
            return None
        return (new if from_site is None else from_site(new), *args[1:])

    return [module.register_forward_pre_hook(input_hook)]


def _heads(d_head: int):
    return (lambda x: x.unflatten(-1, (-1, d_head))), (lambda x: x.flatten(-2))


def _qkv(which: str):
    def install(model: HookedMultimodalModel, layer: int) -> list:
        point = model.hook_dict[f"blocks.{layer}.attn.hook_{which}"]
        d_head = model.cfg.d_head
        separate = getattr(model._mods, f"{which}_proj")[layer]
        if separate is not None:
            return _output_bridge(separate, point, *_heads(d_head))
        fused = model._mods.qkv_proj[layer]
        part = "qkv".index(which)

        def fused_hook(module, args, output):
            parts = list(output.split(model.cfg.d_model, dim=-1))
            value = parts[part].unflatten(-1, (-1, d_head))
            new = point(value)
            if new is value:
                return None
            parts[part] = new.flatten(-2)
            return torch.cat(parts, dim=-1)

        return [fused.register_forward_hook(fused_hook)]

    return install


def _attn_fn(model: HookedMultimodalModel, layer: int) -> list:
    """``attn.hook_attn_scores`` and ``attn.hook_pattern``: the layer's attention runs tv_lens's hooked eager
    attention (:mod:`.attention`) while either holds a hook; a module that never called it raises after running."""
    from .attention import _Switch, record_of

    module = model._mods.attention[layer]
    points = (model.hook_dict[f"blocks.{layer}.attn.hook_attn_scores"],
              model.hook_dict[f"blocks.{layer}.attn.hook_pattern"])
    switch = _Switch(module, module.config, points)

    def clear(module, args):
        record = record_of(module)
        if record is not None:
            record["called"] = False

    def check(module, args, output):
        record = record_of(module)
        if record is not None and not record["called"] and not model._hooks_paused(points[0]):
            raise UnsupportedModelError(
                f"blocks.{layer}.attn.hook_attn_scores / hook_pattern: {type(module).__name__} does not dispatch "
                "through transformers' AttentionInterface, so tv_lens cannot hook its scores or pattern. "
                f"Use blocks.{layer}.attn.hook_z or hook_result instead.")
        return None

    return [module.register_forward_pre_hook(clear), module.register_forward_hook(check), switch]


def _z(model: HookedMultimodalModel, layer: int) -> list:
    return _input_bridge(model._mods.o_proj[layer], model.hook_dict[f"blocks.{layer}.attn.hook_z"],
                         *_heads(model.cfg.d_head))


def _result(model: HookedMultimodalModel, layer: int) -> list:
    point = model.hook_dict[f"blocks.{layer}.attn.hook_result"]
    attn = model.blocks[layer].attn

    def result_hook(module, args, output):
        z = args[0].unflatten(-1, (-1, model.cfg.d_head))
        result = torch.einsum("bphd,hdm->bphm", z, attn.W_O)
        new = point(result)
        if new is result:
            return None
        # A changed result defines the projection's output: what the heads write, plus the bias.
        bias = getattr(module, "bias", None)
        return new.sum(-2) if bias is None else new.sum(-2) + bias

    return [model._mods.o_proj[layer].register_forward_hook(result_hook)]


def _norm(field: str, prefix: str):
    """The bridge of a norm's ``hook_scale`` (read-only, computed from its input) and ``hook_normalized`` (its
    output): ``ln_final`` or, per block, ``ln1`` / ``ln2``."""

    def install(model: HookedMultimodalModel, layer: int | None) -> list:
        name = prefix if layer is None else f"blocks.{layer}.{prefix}"
        scale_point = model.hook_dict.get(f"{name}.hook_scale")
        norm_point = model.hook_dict.get(f"{name}.hook_normalized")
        modules = getattr(model._mods, field)
        module = modules if layer is None else modules[layer]

        def norm_hook(module, args, kwargs, output):
            if _active(scale_point):
                x = args[0] if args else kwargs["hidden_states"]
                _read_only(scale_point, norm_scale(module, x, model.cfg.normalization_type),
                           f"it is computed from the norm's input; patch {name}.hook_normalized instead.")
            if not _active(norm_point):
                return None
            out = _first(output)
            new = norm_point(out)
            return None if new is out else _replace_first(output, new)

        return [module.register_forward_hook(norm_hook, with_kwargs=True)]

    return install


def _tokens(model: HookedMultimodalModel, layer: None) -> list:
    """``hook_tokens``: the token ids entering the embedding (a replacement must keep the shape)."""
    return _input_bridge(model._mods.embed_tokens, model.hook_dict["hook_tokens"])



def norm_scale(module: nn.Module, x: Tensor, normalization_type: str) -> Tensor:
    """TransformerLens's ``hook_scale``: the divisor a norm applies, ``[..., 1]`` (RMS: ``sqrt(mean(x²) + eps)``,
    LN: ``sqrt(var(x) + eps)``), computed in float32 like the HF norms, returned in ``x``'s dtype."""
    eps = getattr(module, "variance_epsilon", None)
    eps = getattr(module, "eps", 1e-5) if eps is None else eps
    xf = x.float()
    if normalization_type == "LN":
        xf = xf - xf.mean(-1, keepdim=True)
    return (xf.pow(2).mean(-1, keepdim=True) + eps).sqrt().to(x.dtype)


def _simple(module_field: str, suffix: str, pre: bool = False):
    def install(model: HookedMultimodalModel, layer: int | None) -> list:
        modules = getattr(model._mods, module_field)
        module = modules if layer is None else modules[layer]
        name = suffix if layer is None else f"blocks.{layer}.{suffix}"
        bridge = _input_bridge if pre else _output_bridge
        return bridge(module, model.hook_dict[name])

    return install


def _image_features(model: HookedMultimodalModel, layer: None) -> list:
    module, point = model._mods.image_features, model.hook_dict["hook_image_features"]
    attr = model.adapter.image_features_attr
    if attr is None:
        return _output_bridge(module, point)

    def field_hook(module, args, output):
        out = getattr(output, attr)
        new = point(out)
        if new is not out:
            output[attr] = new   # a ModelOutput: sets the key and the attribute
        return None

    return [module.register_forward_hook(field_hook)]


BRIDGES: dict[str, Callable[[Any, int | None], list]] = {
    "layer_pre": _layer_pre,
    "attn_out": _attn_out,
    "layer_post": _simple("layers", "hook_resid_post"),
    "mlp_out": _simple("mlp_out", "hook_mlp_out"),
    "mlp_post": _simple("mlp_down", "mlp.hook_post", pre=True),
    "q": _qkv("q"),
    "k": _qkv("k"),
    "v": _qkv("v"),
    "attn_fn": _attn_fn,
    "z": _z,
    "result": _result,
    "final_norm": _norm("final_norm", "ln_final"),
    "ln1": _norm("ln1", "ln1"),
    "ln2": _norm("ln2", "ln2"),
    "mlp_in": _simple("ln2", "hook_mlp_in", pre=True),
    "mlp_pre": _simple("mlp_pre", "mlp.hook_pre"),
    "mlp_pre_linear": _simple("mlp_in", "mlp.hook_pre_linear"),
    "tokens": _tokens,
    "image_features": _image_features,
    "embed": _simple("embed_tokens", "hook_embed"),
    "pos_embed": _simple("pos_embed", "hook_pos_embed"),
}


def bridges_of(model: HookedMultimodalModel, name: str) -> list[tuple[str, int | None]]:
    """The bridges a hook point needs (``hook_resid_mid`` needs the layer's input too)."""
    site, layer = split_name(name)
    bridge = _bridge(model, site)
    keys = [(bridge, layer if site.per_layer else (0 if bridge == "layer_pre" else None))]
    if site.suffix == "hook_resid_mid":
        keys.insert(0, ("layer_pre", layer))
    return keys


def points_of(model: HookedMultimodalModel, key: tuple[str, int | None]) -> list[BridgedHookPoint]:
    """Every hook point served by a bridge (the bridge stays while any of them holds a hook)."""
    bridge, layer = key
    points = _points(model, bridge, layer)
    if bridge == "layer_pre" and layer is not None:
        mid = model.hook_dict.get(f"blocks.{layer}.hook_resid_mid")
        if mid is not None:
            points.append(mid)
    return points
