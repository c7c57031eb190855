"""HookedMultimodalModel: TransformerLens hook points on an unmodified Hugging Face VLM or causal LM.

The HF model is never rewritten. Each hook point (a TransformerLens ``HookPoint``) is bridged to the HF module it
stands for by a PyTorch hook that exists ONLY while some hook function is attached to that hook point, so a model
with no active hooks runs exactly the HF code path, at the HF speed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import ActivationCache
from transformer_lens.HookedRootModule import HookedRootModule
from transformer_lens.hook_points import HookPoint

from . import positions as _positions
from .adapters import Adapter, adapter_for, resolve_path
from .errors import (
    HookNameError,
    IncompatibleArgumentsError,
    InputError,
    LayerOutOfRangeError,
    UnsupportedModelError,
)

_SEQUENCE_FREE_HOOKS = ("hook_image_features",)
_BLOCK_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
_HEAD_HOOKS = {"hook_z": "z", "hook_result": "result", "hook_pattern": "pattern"}


@dataclass
class HookedModelConfig:
    """What a user needs to know about the wrapped model (TransformerLens calls this ``cfg``)."""

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


class _StopForward(Exception):
    """Raised inside the forward pass to return early (``stop_at_layer``)."""


class _BridgedHookPoint(HookPoint):
    """A HookPoint that tells its model when hooks come and go, so the model bridges it only while needed."""

    def __init__(self) -> None:
        super().__init__()
        self._site_changed: Callable[[_BridgedHookPoint], None] | None = None
        self._check_attach: Callable[[], None] | None = None   # raises when this point cannot run here

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
        return bool(self.fwd_hooks)


class _AttentionHooks(nn.Module):
    """``blocks.{l}.attn``: per-head hook points (TransformerLens names)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_pattern = _BridgedHookPoint()   # [batch, head, query_pos, key_pos], eager attention only
        self.hook_z = _BridgedHookPoint()         # [batch, pos, head, d_head]
        self.hook_result = _BridgedHookPoint()    # [batch, pos, head, d_model]


class _BlockHooks(nn.Module):
    def __init__(self, has_resid_mid: bool, has_heads: bool = False) -> None:
        super().__init__()
        self.hook_resid_pre = _BridgedHookPoint()
        if has_heads:
            self.attn = _AttentionHooks()
        if has_resid_mid:
            self.hook_resid_mid = _BridgedHookPoint()
        self.hook_attn_out = _BridgedHookPoint()
        self.hook_mlp_out = _BridgedHookPoint()
        self.hook_resid_post = _BridgedHookPoint()


class _FinalNormHooks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_normalized = _BridgedHookPoint()


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, tensor: Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        value = getattr(torch, str(dtype).replace("torch.", ""))
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise InputError(f"Unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'.")
    return value


class HookedMultimodalModel(HookedRootModule):
    """A Hugging Face VLM or causal LM with TransformerLens hook points.

    Hook points (``model.hook_names()`` lists them): ``hook_embed`` (the residual entering block 0, after image
    features are merged in), ``hook_image_features`` (projector output, ``[n_images, n_image_tokens, d_model]``,
    multimodal families only), and per decoder layer ``l``: ``blocks.{l}.hook_resid_pre``, ``hook_resid_mid``,
    ``hook_attn_out``, ``hook_mlp_out``, ``hook_resid_post`` (= HF ``hidden_states[l + 1]``), and
    ``ln_final.hook_normalized``. Sequence hooks carry ``Float[Tensor, "batch pos d_model"]``.

    Per attention head (families whose adapter names the output projection): ``blocks.{l}.attn.hook_z`` (each
    head's output before the output projection, ``[batch, pos, head, d_head]``; read and patch),
    ``blocks.{l}.attn.hook_result`` (each head's contribution to the residual, ``z_h @ W_O[h]``,
    ``[batch, pos, head, d_model]``, computed only while a hook is attached; a hook that changes it makes the
    projection output ``sum_h result_h + b_O``), and ``blocks.{l}.attn.hook_pattern`` (attention weights
    ``[batch, head, query_pos, key_pos]``; needs ``attn_implementation="eager"``; read-only). ``names_filter=None``
    leaves out ``hook_result`` (memory) and, without eager attention, ``hook_pattern``; name them to cache them.

    Build one with :meth:`from_pretrained` (hub id or local folder) or :meth:`from_hf` (a model you already have).
    """

    def __init__(self, hf_model: nn.Module, processor: Any = None, tokenizer: Any = None,
                 adapter: Adapter | None = None, model_name: str | None = None) -> None:
        super().__init__()
        self.adapter = adapter or adapter_for(hf_model)
        self.hf_model = hf_model
        self.processor = processor
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        hf_config = hf_model.config
        text_config = self.adapter.text_config(hf_config)

        self._layers = resolve_path(hf_model, self.adapter.layers)
        self._final_norm = resolve_path(hf_model, self.adapter.final_norm)
        self._lm_head = resolve_path(hf_model, self.adapter.lm_head)
        self._embed_tokens = resolve_path(hf_model, self.adapter.embed_tokens)
        missing = [what for what, mod in (("decoder layers", self._layers), ("final norm", self._final_norm),
                                          ("lm_head", self._lm_head), ("embed_tokens", self._embed_tokens))
                   if mod is None]
        if missing:
            raise UnsupportedModelError(
                f"The {self.adapter.family} adapter could not find the {', '.join(missing)} of "
                f"{type(hf_model).__name__}; this transformers version may have moved them. Update the paths in "
                f"tv_lens/adapters/{self.adapter.family}.py.")
        self._attn_modules = [resolve_path(layer, self.adapter.attn_out) for layer in self._layers]
        self._mlp_modules = [resolve_path(layer, self.adapter.mlp_out) for layer in self._layers]
        self._o_proj_modules = ([resolve_path(layer, self.adapter.o_proj) for layer in self._layers]
                                if self.adapter.o_proj else [])
        self._attention_modules = [resolve_path(layer, self.adapter.attention) for layer in self._layers]
        self._image_projector = (resolve_path(hf_model, self.adapter.image_features)
                                 if self.adapter.image_features else None)

        n_layers = len(self._layers)
        d_model = int(getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd"))
        n_heads = getattr(text_config, "num_attention_heads", None) or getattr(text_config, "n_head", None)
        d_head = getattr(text_config, "head_dim", None) or (d_model // n_heads if n_heads else None)
        weight = self._embed_tokens.weight
        self.cfg = HookedModelConfig(
            model_name=model_name or getattr(hf_config, "name_or_path", "") or type(hf_model).__name__,
            family=self.adapter.family,
            architecture=type(hf_model).__name__,
            n_layers=n_layers,
            d_model=d_model,
            d_vocab=int(self._lm_head.weight.shape[0]),
            n_heads=n_heads,
            d_head=d_head,
            device=weight.device,
            dtype=weight.dtype,
            is_multimodal=self.adapter.is_multimodal,
            image_token_id=self.adapter.image_token_id(hf_config) if self.adapter.is_multimodal else None,
        )

        self.hook_embed = _BridgedHookPoint()
        if self._image_projector is not None:
            self.hook_image_features = _BridgedHookPoint()
        has_heads = self._head_hooks = self._has_head_hooks()
        self.blocks = nn.ModuleList(_BlockHooks(self.adapter.has_resid_mid, has_heads) for _ in range(n_layers))
        self.ln_final = _FinalNormHooks()
        self.setup()
        # HookedRootModule.setup walks every module, HF ones included; keep only our own names.
        self.mod_dict = {k: v for k, v in self.mod_dict.items() if not k.startswith("hf_model")}
        self._torch_handles: dict[tuple, list] = {}
        self._resid_pre_store: dict[int, Tensor] = {}
        for hook_point in self.hook_dict.values():
            hook_point._site_changed = self._sync_site
        if has_heads:
            for block in self.blocks:
                block.attn.hook_pattern._check_attach = self._check_pattern_available

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_hf(cls, model: nn.Module, processor: Any = None, tokenizer: Any = None,
                model_name: str | None = None) -> HookedMultimodalModel:
        """Wrap an HF model you already have. ``processor`` (VLMs) or ``tokenizer`` (LMs) enables text input.

        The model is put in eval mode; nothing else about it changes.
        """
        model.eval()
        return cls(model, processor=processor, tokenizer=tokenizer, model_name=model_name)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: str | torch.dtype | None = None,
                        device: str | torch.device | None = None, device_map: Any = None,
                        quantization_config: Any = None, trust_remote_code: bool = False,
                        **hf_kwargs: Any) -> HookedMultimodalModel:
        """Load a hub id or local folder with transformers, then wrap it.

        Args:
            name_or_path: hub id (``"HuggingFaceM4/idefics2-8b"``) or a folder written by ``save_pretrained``.
            dtype: ``"bfloat16"``, ``torch.float16``...; default: the checkpoint's.
            device: move the model there after loading (ignored with ``device_map``).
            device_map: passed to transformers (``"auto"`` spreads a large model over GPUs/CPU).
            quantization_config: e.g. ``transformers.BitsAndBytesConfig(load_in_4bit=True)``.
            trust_remote_code: off unless you ask; custom code from the hub runs only then.
            **hf_kwargs: anything else ``from_pretrained`` takes (``attn_implementation="eager"``, ``revision``...).

        Raises:
            UnsupportedModelError: the checkpoint's architecture has no adapter (checked before weights load).
        """
        import transformers
        from transformers import AutoConfig

        from .adapters import supported_architectures

        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        architectures = list(getattr(config, "architectures", None) or [])
        model_cls = next((getattr(transformers, a) for a in architectures if hasattr(transformers, a)), None)
        if model_cls is None or not any(c.__name__ in supported_architectures() for c in model_cls.__mro__):
            adapter_for(model_cls.__new__(model_cls) if model_cls is not None else object())
        load_kwargs: dict[str, Any] = dict(trust_remote_code=trust_remote_code, **hf_kwargs)
        if dtype is not None:
            load_kwargs["dtype"] = _parse_dtype(dtype)
        if device_map is not None:
            load_kwargs["device_map"] = device_map
        if quantization_config is not None:
            load_kwargs["quantization_config"] = quantization_config
        model = model_cls.from_pretrained(name_or_path, **load_kwargs)
        if device is not None and device_map is None and quantization_config is None:
            model = model.to(device)
        processor = tokenizer = None
        adapter = adapter_for(model)
        if adapter.is_multimodal:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        return cls.from_hf(model, processor=processor, tokenizer=tokenizer, model_name=str(name_or_path))

    def __repr__(self) -> str:
        c = self.cfg
        return (f"HookedMultimodalModel({c.model_name!r}, family={c.family}, {c.architecture}, "
                f"n_layers={c.n_layers}, d_model={c.d_model}, d_vocab={c.d_vocab}, dtype={c.dtype}, "
                f"device={c.device}, hook points={len(self.hook_dict)})")

    # ------------------------------------------------------------------ bridges
    def _site_keys(self, hook_point: HookPoint) -> list[tuple]:
        name = hook_point.name
        if name == "hook_embed":
            return [("layer_pre", 0)]
        if name == "hook_image_features":
            return [("image_features",)]
        if name == "ln_final.hook_normalized":
            return [("final_norm",)]
        parts = name.split(".")
        if len(parts) == 4:   # blocks.{l}.attn.hook_{z,result,pattern}
            return [(_HEAD_HOOKS[parts[3]], int(parts[1]))]
        _, layer, kind = parts
        layer = int(layer)
        return {
            "hook_resid_pre": [("layer_pre", layer)],
            "hook_resid_post": [("layer_post", layer)],
            "hook_attn_out": [("attn", layer)],
            "hook_resid_mid": [("layer_pre", layer), ("attn", layer)],
            "hook_mlp_out": [("mlp", layer)],
        }[kind]

    def _site_hook_points(self, key: tuple) -> list[_BridgedHookPoint]:
        kind = key[0]
        if kind == "layer_pre":
            block = self.blocks[key[1]]
            points = [block.hook_resid_pre] + ([block.hook_resid_mid] if self.adapter.has_resid_mid else [])
            return ([self.hook_embed] if key[1] == 0 else []) + points
        if kind == "attn":
            block = self.blocks[key[1]]
            return [block.hook_attn_out] + ([block.hook_resid_mid] if self.adapter.has_resid_mid else [])
        if kind == "layer_post":
            return [self.blocks[key[1]].hook_resid_post]
        if kind == "mlp":
            return [self.blocks[key[1]].hook_mlp_out]
        if kind == "final_norm":
            return [self.ln_final.hook_normalized]
        if kind in ("z", "result", "pattern"):
            return [getattr(self.blocks[key[1]].attn, f"hook_{kind}")]
        return [self.hook_image_features]

    def _sync_site(self, hook_point: HookPoint) -> None:
        for key in self._site_keys(hook_point):
            wanted = any(hp.active for hp in self._site_hook_points(key))
            installed = key in self._torch_handles
            if wanted and not installed:
                self._torch_handles[key] = self._install_bridge(key)
            elif installed and not wanted:
                for handle in self._torch_handles.pop(key):
                    handle.remove()
                if key[0] == "layer_pre":
                    self._resid_pre_store.pop(key[1], None)

    def _install_bridge(self, key: tuple) -> list:
        kind = key[0]
        if kind == "layer_pre":
            layer = key[1]
            block = self.blocks[layer]
            mid = getattr(block, "hook_resid_mid", None)

            def pre_hook(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                new = hidden
                if layer == 0 and self.hook_embed.active:
                    new = self.hook_embed(new)
                if block.hook_resid_pre.active:
                    new = block.hook_resid_pre(new)
                if mid is not None and mid.active:
                    self._resid_pre_store[layer] = new
                if new is hidden:
                    return None
                if args:
                    return (new, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": new}

            return [self._layers[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)]
        if kind == "attn":
            layer = key[1]
            block = self.blocks[layer]
            mid = getattr(block, "hook_resid_mid", None)

            def attn_hook(module, args, output):
                out = _first(output)
                new = block.hook_attn_out(out) if block.hook_attn_out.active else out
                if mid is not None and mid.active:
                    resid_pre = self._resid_pre_store.pop(layer)
                    resid_mid = resid_pre + new
                    patched = mid(resid_mid)
                    if patched is not resid_mid:
                        # The layer adds this output to resid_pre itself; hand it the difference.
                        new = patched - resid_pre
                return None if new is out else _replace_first(output, new)

            return [self._attn_modules[layer].register_forward_hook(attn_hook)]
        if kind in ("z", "result", "pattern"):
            return self._install_head_bridge(kind, key[1])

        if kind == "layer_post":
            module, point = self._layers[key[1]], self.blocks[key[1]].hook_resid_post
        elif kind == "mlp":
            module, point = self._mlp_modules[key[1]], self.blocks[key[1]].hook_mlp_out
        elif kind == "final_norm":
            module, point = self._final_norm, self.ln_final.hook_normalized
        else:
            module, point = self._image_projector, self.hook_image_features
            attr = self.adapter.image_features_attr
            if attr is not None:
                def field_hook(module, args, output):
                    out = getattr(output, attr)
                    new = point(out)
                    if new is not out:
                        output[attr] = new   # a ModelOutput: sets the key and the attribute
                    return None

                return [module.register_forward_hook(field_hook)]

        def output_hook(module, args, output):
            out = _first(output)
            new = point(out)
            return None if new is out else _replace_first(output, new)

        return [module.register_forward_hook(output_hook)]

    # ------------------------------------------------------------------ attention heads
    def _has_head_hooks(self) -> bool:
        """Head hooks need the head layout and, in every layer, an output projection of width n_heads * d_head."""
        n_heads, d_head = self.cfg.n_heads, self.cfg.d_head
        if not n_heads or not d_head or not self._o_proj_modules:
            return False
        return all(module is not None and _in_features(module) == n_heads * d_head
                   for module in self._o_proj_modules)

    def _install_head_bridge(self, kind: str, layer: int) -> list:
        attn = self.blocks[layer].attn
        n_heads, d_head = self.cfg.n_heads, self.cfg.d_head
        if kind == "pattern":
            point = attn.hook_pattern

            def pattern_hook(module, args, output):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    self._check_pattern_available(ran=True)
                new = point(weights)
                if new is not None and new is not weights:
                    raise IncompatibleArgumentsError(
                        f"blocks.{layer}.attn.hook_pattern can be read, not patched: the attention module has "
                        f"already used the weights when they reach the hook. Patch blocks.{layer}.attn.hook_z "
                        "instead.")
                return None

            return [self._attention_modules[layer].register_forward_hook(pattern_hook)]
        o_proj = self._o_proj_modules[layer]
        if kind == "z":
            def z_hook(module, args):
                if not args:
                    raise UnsupportedModelError(f"{self.cfg.family}: the output projection was called without a "
                                                "positional input; hook_z cannot read it.")
                z = args[0].unflatten(-1, (n_heads, d_head))
                new = attn.hook_z(z)
                return None if new is z else (new.flatten(-2), *args[1:])

            return [o_proj.register_forward_pre_hook(z_hook)]

        def result_hook(module, args, output):
            z = args[0].unflatten(-1, (n_heads, d_head))
            result = torch.einsum("bphd,hdm->bphm", z, self.W_O(layer))
            new = attn.hook_result(result)
            if new is result:
                return None
            # A changed result defines the projection's output: what the heads write, plus the bias.
            bias = self.b_O(layer)
            return new.sum(-2) if bias is None else new.sum(-2) + bias

        return [o_proj.register_forward_hook(result_hook)]

    def W_O(self, layer: int) -> Float[Tensor, "head d_head d_model"]:
        """Layer ``layer``'s attention output matrix split per head (a view of the HF weight, no copy):
        ``hook_result[..., h, :] = hook_z[..., h, :] @ W_O(layer)[h]``."""
        layer = self.layer_index(layer)
        if not self._head_hooks:
            raise UnsupportedModelError(f"The {self.cfg.family} adapter names no output projection of width "
                                        "n_heads * d_head; set Adapter.o_proj.")
        module = self._o_proj_modules[layer]
        weight = module.weight if isinstance(module, nn.Linear) else module.weight.T   # GPT-2 Conv1D: [in, out]
        if tuple(weight.shape) != (self.cfg.d_model, self.cfg.n_heads * self.cfg.d_head):
            raise UnsupportedModelError(
                f"The output projection of layer {layer} has a weight of shape {tuple(weight.shape)}, not "
                f"[d_model, n_heads * d_head] (a quantized layer?); hook_result needs a dense one. Read hook_z.")
        return weight.T.unflatten(0, (self.cfg.n_heads, self.cfg.d_head))

    def b_O(self, layer: int) -> Float[Tensor, " d_model"] | None:
        """Layer ``layer``'s attention output bias (``None`` when the projection has none)."""
        return getattr(self._o_proj_modules[self.layer_index(layer)], "bias", None)

    @property
    def attn_implementation(self) -> str | None:
        """The attention implementation the decoder layers run (``"eager"``, ``"sdpa"``...)."""
        config = getattr(self._attention_modules[0], "config", None) if self._attention_modules else None
        config = config or self.adapter.text_config(self.hf_model.config)
        return getattr(config, "_attn_implementation", None)

    def _check_pattern_available(self, ran: bool = False) -> None:
        impl = self.attn_implementation
        if ran or impl != "eager":
            raise IncompatibleArgumentsError(
                f"blocks.*.attn.hook_pattern needs the attention weights, which only eager attention returns; this "
                f"model runs attn_implementation={impl!r}. Load it with attn_implementation=\"eager\" "
                "(from_pretrained(..., attn_implementation=\"eager\")) or call "
                "model.hf_model.set_attn_implementation(\"eager\"). hook_z and hook_result work with any.")

    def _cached_by_default(self, name: str) -> bool:
        if name.endswith("attn.hook_result"):
            return False
        return not (name.endswith("attn.hook_pattern") and self.attn_implementation != "eager")

    # ------------------------------------------------------------------ names
    def hook_names(self) -> list[str]:
        """All hook point names, in forward order."""
        return list(self.hook_dict)

    def _check_name(self, name: str) -> None:
        if name not in self.hook_dict:
            raise HookNameError(name, self.hook_dict)

    def _expand_names(self, names_filter: Any) -> list[str]:
        """Hook names selected by a filter: ``None`` (all), a name, a glob (``blocks.*.hook_resid_post``),
        a list of those, or a predicate ``str -> bool``."""
        if names_filter is None:
            return [n for n in self.hook_names() if self._cached_by_default(n)]
        if callable(names_filter):
            return self._drop_unavailable([n for n in self.hook_dict if names_filter(n)])
        patterns = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        selected: list[str] = []
        for pattern in patterns:
            if any(ch in pattern for ch in "*?["):
                matches = fnmatch.filter(self.hook_dict, pattern)
                if not matches:
                    raise HookNameError(pattern, self.hook_dict)
                matches = self._drop_unavailable(matches)
            else:
                self._check_name(pattern)
                matches = [pattern]
            selected.extend(m for m in matches if m not in selected)
        return selected

    def _drop_unavailable(self, names: list[str]) -> list[str]:
        """Wildcards skip attention patterns a non-eager model cannot give, unless they select nothing else (then
        attaching raises the error that names the fix)."""
        kept = [n for n in names if self._cached_by_default(n) or n.endswith("attn.hook_result")]
        return kept or names

    def layer_index(self, layer: int) -> int:
        """Normalise a layer index (negative counts from the end); raise if out of range."""
        n = self.cfg.n_layers
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise LayerOutOfRangeError(f"Layer must be an int, got {layer!r}.")
        if not -n <= layer < n:
            raise LayerOutOfRangeError(f"Layer {layer} is out of range: this model has {n} layers (0..{n - 1}).")
        return layer % n

    # ------------------------------------------------------------------ hooks API
    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:
        """Attach ``hook(tensor, hook=HookPoint) -> tensor | None`` to a hook point (TransformerLens semantics)."""
        if isinstance(name, str):
            self._check_name(name)
        super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def remove_all_hook_fns(self, direction="both", including_permanent: bool = False, level=None) -> None:
        """TransformerLens semantics; only the hook points that hold hooks are visited (a model has hundreds)."""
        for point in self.hook_dict.values():
            if point.fwd_hooks or point.bwd_hooks:
                point.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def _enable_hook_with_name(self, name: str, hook: Callable, dir) -> None:
        self._check_name(name)
        super()._enable_hook_with_name(name, hook, dir)

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (), bwd_hooks=(),
              reset_hooks_end: bool = True, clear_contexts: bool = False):
        """Context manager: the hooks are attached inside the block and always removed on exit, even on error.

        Example::

            with model.hooks([("blocks.16.hook_resid_post", tvl.hooks.patch(vec[16], at="delimiter"))]):
                out = model.generate(image_query, max_new_tokens=5)
        """
        from .hooks import PositionHook, check_fired

        for name, _ in fwd_hooks:
            if isinstance(name, str):
                self._check_name(name)
        user_fns = [getattr(fn, "__wrapped__", fn) for _, fn in fwd_hooks]
        for fn in user_fns:
            if isinstance(fn, PositionHook):
                fn.fired = 0
        with super().hooks(list(fwd_hooks), list(bwd_hooks), reset_hooks_end, clear_contexts) as model:
            yield model
        check_fired(user_fns)

    # ------------------------------------------------------------------ inputs
    @property
    def input_device(self) -> torch.device:
        return self._embed_tokens.weight.device

    def prepare(self, text: str | Sequence[str], images: Any = None, padding_side: str = "left",
                **processor_kwargs: Any) -> dict[str, Tensor]:
        """Tokenize text (and images) into model inputs: a left-padded batch on the model's device.

        Args:
            text: one prompt or a list. Write the family's image placeholder (``model.image_placeholder``,
                e.g. ``"<image>"``) where each image goes.
            images: ``None``; one PIL image; a flat list (in order over the whole batch); or one list per prompt.

        Raises:
            InputError: the number of images does not match the placeholders, or no tokenizer/processor is known.
        """
        if not isinstance(text, str) and text and not isinstance(text[0], str):
            from .prompts import encode

            return encode(self, text)
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise InputError("No text given.")
        from .checks import check_context, check_images_per_prompt, check_texts

        check_texts(texts)
        placeholder = self.adapter.image_placeholder
        n_placeholders = [t.count(placeholder) if placeholder else 0 for t in texts]
        check_images_per_prompt(images, n_placeholders)
        flat_images = _flatten_images(images, n_placeholders)
        if len(flat_images) != sum(n_placeholders):
            raise InputError(
                f"{len(flat_images)} image(s) given but the text has {sum(n_placeholders)} image placeholder(s) "
                f"{placeholder!r} ({n_placeholders} per prompt). Put one placeholder where each image goes.")
        limit = self.adapter.max_images_per_prompt
        if limit is not None and max(n_placeholders) > limit:
            row = next(i for i, n in enumerate(n_placeholders) if n > limit)
            raise InputError(
                f"{self.cfg.family} takes at most {limit} image(s) per prompt: its processor cannot lay out more "
                f"(prompt {row} has {n_placeholders[row]}). Give each image its own prompt.")
        if self.adapter.images_first and flat_images:
            late = [i for i, (t, n) in enumerate(zip(texts, n_placeholders)) if not t.startswith(placeholder * n)]
            if late:
                raise InputError(
                    f"{self.cfg.family}'s processor puts a prompt's image before its text, so the placeholder "
                    f"{placeholder!r} must open the prompt (prompt {late[0]}: {texts[late[0]][:40]!r}...).")
            texts = [t[len(placeholder) * n:] for t, n in zip(texts, n_placeholders)]
        if flat_images:
            if self.processor is None:
                raise InputError("Images need a processor: wrap the model with from_hf(model, processor=...).")
            per_prompt = _split_per_prompt(flat_images, n_placeholders)
            kwargs = {"text": texts, self.adapter.processor_image_kwarg: per_prompt, "return_tensors": "pt",
                      "padding": True, **dict(self.adapter.processor_kwargs), **processor_kwargs}
            tokenizer = self.processor.tokenizer
            old_side = tokenizer.padding_side
            tokenizer.padding_side = padding_side
            try:
                encoded = self.processor(**kwargs)
            finally:
                tokenizer.padding_side = old_side
        else:
            tokenizer = self.tokenizer
            if tokenizer is None:
                raise InputError("Text input needs a tokenizer: wrap the model with from_hf(model, tokenizer=...).")
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            old_side = tokenizer.padding_side
            tokenizer.padding_side = padding_side
            try:
                encoded = tokenizer(texts, return_tensors="pt", padding=True, **processor_kwargs)
            finally:
                tokenizer.padding_side = old_side
        check_context(self, encoded["input_ids"], encoded.get("attention_mask"))
        return self._to_device(dict(encoded))

    @property
    def image_placeholder(self) -> str | None:
        """What to write in a prompt where an image goes (``None`` for text-only models)."""
        return self.adapter.image_placeholder

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        device = self.input_device
        moved = type(inputs)() if type(inputs) is not dict and isinstance(inputs, dict) else {}
        if hasattr(moved, "__dict__"):
            moved.__dict__.update(getattr(inputs, "__dict__", {}))  # a PromptBatch keeps prompts and positions
        for key, value in inputs.items():
            if isinstance(value, Tensor) and value.device != device:
                if value.device.type == "meta":
                    raise InputError(f"Input {key!r} is on the meta device and holds no data; build it with real "
                                     "values (e.g. model.prepare(text)).")
                value = value.to(device)
            if isinstance(value, Tensor) and value.is_floating_point() and key.startswith("pixel"):
                value = value.to(self.cfg.dtype)
            moved[key] = value
        return moved

    def _as_inputs(self, inputs: Any) -> dict[str, Any]:
        from .prompts import Prompt, encode

        if isinstance(inputs, Prompt) or (isinstance(inputs, (list, tuple)) and inputs
                                          and all(isinstance(p, Prompt) for p in inputs)):
            return encode(self, inputs)
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs
                                       and all(isinstance(t, str) for t in inputs)):
            return self.prepare(inputs)
        if isinstance(inputs, Tensor):
            inputs = {"input_ids": inputs}
        if not isinstance(inputs, dict) and hasattr(inputs, "keys"):
            inputs = dict(inputs)
        if not isinstance(inputs, dict) or "input_ids" not in inputs:
            raise InputError("Inputs must be text, prompts, a token tensor, or a dict with input_ids (a processor "
                             f"output); got {type(inputs).__name__}.")
        if inputs["input_ids"].ndim == 1:
            inputs = {k: (v[None] if isinstance(v, Tensor) and k in ("input_ids", "attention_mask") else v)
                      for k, v in inputs.items()}
        return _extend_token_types(self._to_device(inputs))

    def positions(self, inputs: Any) -> _positions.TokenPositions:
        """Per-row token positions of a batch: last real token, first real token, image token spans."""
        inputs = self._as_inputs(inputs)
        meta = getattr(inputs, "named_positions", None)
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        seq_len = input_ids.shape[1]
        ar = torch.arange(seq_len, device=mask.device)
        real = mask.bool()
        last = torch.where(real, ar, -1).max(dim=1).values
        first = torch.where(real, ar, seq_len).min(dim=1).values
        config = self.hf_model.config

        def images() -> list[list[Tensor]]:   # computed only when an image position is asked for
            return [self.adapter.spans_for_row(row, config) for row in input_ids]

        return _positions.TokenPositions(seq_len=seq_len, last=last, first=first, images=images,
                                         named=list(meta) if meta else [])

    # ------------------------------------------------------------------ running
    def forward(self, inputs: Any, **forward_kwargs: Any) -> Float[Tensor, "batch pos d_vocab"]:
        """Run the HF model; return its logits ``[batch, pos, d_vocab]``. Active hooks act."""
        inputs = self._as_inputs(inputs)
        return self._run(inputs, **forward_kwargs)

    def _run(self, inputs: dict[str, Any], **forward_kwargs: Any) -> Tensor:
        forward_kwargs.setdefault("use_cache", False)
        from .hooks import running

        model_inputs = {k: v for k, v in inputs.items() if k != "offset_mapping"}
        with running(self, inputs):
            return self.hf_model(**model_inputs, **forward_kwargs).logits

    def run_with_hooks(self, inputs: Any, fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (),
                       **forward_kwargs: Any) -> Float[Tensor, "batch pos d_vocab"]:
        """Run with temporary hooks (removed afterwards, also on error); return logits."""
        inputs = self._as_inputs(inputs)
        with self.hooks(fwd_hooks):
            return self._run(inputs, **forward_kwargs)

    def run_with_cache(self, inputs: Any, names_filter: Any = None, positions: Any = None,
                       stop_at_layer: int | None = None, fwd_hooks: Sequence = (), device: Any = None,
                       **forward_kwargs: Any) -> tuple[Tensor | None, ActivationCache]:
        """Run once and keep activations.

        Args:
            inputs: text, a processor output dict, or a prompt batch.
            names_filter: which hooks to keep: ``None`` (all), a name, a glob like ``"blocks.*.hook_resid_post"``,
                a list, or a predicate.
            positions: keep only these token positions (see :mod:`tv_lens.positions`). A single position per row
                (``-1``, ``"last"``, ``"delimiter"``) gives ``[batch, d_model]`` entries; several give
                ``[batch, k, d_model]``. ``hook_image_features`` is kept whole.
            stop_at_layer: run only blocks ``0 .. stop_at_layer - 1`` and return ``(None, cache)``; later blocks,
                the final norm and the unembedding never run.
            fwd_hooks: extra hooks (e.g. a patch) active during this run; they run before the caching hooks.
            device: move cached tensors there (default: where they were computed).

        Returns:
            ``(logits [batch, pos, d_vocab] or None, transformer_lens.ActivationCache)``.

        Raises:
            HookNameError: a name or pattern that matches no hook point.
            IncompatibleArgumentsError: a requested hook lies past ``stop_at_layer``.
            PositionError: a position that is out of range or does not occur in some row.
        """
        inputs = self._as_inputs(inputs)
        names = self._expand_names(names_filter)
        explicit = names_filter is not None and not callable(names_filter) and not any(
            ch in p for p in ([names_filter] if isinstance(names_filter, str) else names_filter) for ch in "*?[")
        stop_layer = None
        if stop_at_layer is not None:
            n = self.cfg.n_layers
            if not isinstance(stop_at_layer, int) or not -n <= stop_at_layer <= n:
                raise LayerOutOfRangeError(f"stop_at_layer={stop_at_layer!r} must be an int in [-{n}, {n}].")
            stop_layer = stop_at_layer % n if stop_at_layer < 0 else stop_at_layer
            reachable = [nm for nm in names if _reachable(nm, stop_layer)]
            if explicit and len(reachable) < len(names):
                beyond = [nm for nm in names if nm not in reachable]
                raise IncompatibleArgumentsError(
                    f"stop_at_layer={stop_at_layer} stops before {beyond[:3]}{'...' if len(beyond) > 3 else ''} "
                    "run; raise stop_at_layer or drop those names.")
            names = reachable
        index = None
        if positions is not None:
            index = _positions.resolve(positions, self.positions(inputs))

        store: dict[str, Tensor] = {}

        def save(tensor: Tensor, hook: HookPoint) -> None:
            kept = tensor.detach()
            if index is not None and hook.name.endswith("attn.hook_pattern"):
                # [batch, head, query, key]: the positions pick queries -> [batch, head, key] or [batch, head, k, key]
                kept = _positions.gather(kept.transpose(1, 2), index)
                kept = kept if index.ndim == 1 else kept.transpose(1, 2)
            elif index is not None and hook.name not in _SEQUENCE_FREE_HOOKS:
                kept = _positions.gather(kept, index)
            store[hook.name] = kept if device is None else kept.to(device)

        def stop(*_args, **_kwargs):
            raise _StopForward

        stop_handle = None
        logits = None
        try:
            with self.hooks(list(fwd_hooks) + [(name, save) for name in names]):
                if stop_layer is not None:
                    # Registered after the bridges above, so the caching hooks of this layer's input run first.
                    target = self._layers[stop_layer] if stop_layer < self.cfg.n_layers else self._final_norm
                    stop_handle = target.register_forward_pre_hook(stop)
                try:
                    logits = self._run(inputs, **forward_kwargs)
                except _StopForward:
                    logits = None
        finally:
            if stop_handle is not None:
                stop_handle.remove()
            self._resid_pre_store.clear()
        ordered = {name: store[name] for name in names if name in store}
        return logits, ActivationCache(ordered, self, has_batch_dim=True)

    @torch.no_grad()
    def run_last_token(self, inputs: Any, fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (),
                       repeat: int = 1) -> Float[Tensor, "batch_x_repeat d_vocab"]:
        """Logits at the last token, re-running ONLY that token (``repeat`` copies per row) on the clean prefix's
        KV cache, with ``fwd_hooks`` active on that step.

        This is exact for hooks that act at the last position: no earlier position can see the change. Rows come
        out interleaved, row ``b * repeat + g`` is copy ``g`` of prompt ``b``; hooks resolve positions on the
        one-token step (``-1`` / ``"last"``), and ``rows=`` selects copies. A layer sweep batches one copy per
        layer this way instead of re-running every prompt once per layer.

        Raises:
            IncompatibleArgumentsError: for families whose positions depend on more than the cache length.
        """
        return self.last_token_runner(inputs, keep_prefix=False)(fwd_hooks, repeat)

    @torch.no_grad()
    def last_token_runner(self, inputs: Any, keep_prefix: bool = True
                          ) -> Callable[..., Float[Tensor, "batch_x_repeat d_vocab"]]:
        """Run the prefix (all but the last token) of ``inputs`` ONCE; return ``run(fwd_hooks=(), repeat=1)``, which
        does what :meth:`run_last_token` does on that cached prefix, as often as asked — each call on a fresh copy
        of the cache (``keep_prefix=False``: a single call, no copy).

        For many patched variants of one batch (one per head of a model, say), this pays the prompt once.
        """
        from .hooks import running

        if not self.adapter.prefix_reuse:
            raise IncompatibleArgumentsError(f"{self.cfg.family} cannot re-run a last token on a cached prefix; "
                                             "run the whole prompt (model.run_with_hooks).")
        inputs = self._as_inputs(inputs)
        ids = inputs["input_ids"]
        if ids.shape[1] < 2:
            raise InputError("run_last_token needs prompts of at least two tokens.")
        per_token = {k for k, v in inputs.items() if isinstance(v, Tensor) and v.ndim >= 2
                     and tuple(v.shape[:2]) == tuple(ids.shape)}
        prefix = {k: (v[:, :-1] if k in per_token else v) for k, v in inputs.items()}
        with running(self, prefix):
            prefix_cache = _kv_cache(self.hf_model(**prefix, use_cache=True))
        last = {k: inputs[k][:, -1:] for k in per_token if k != "attention_mask"}
        last["attention_mask"] = inputs.get("attention_mask", torch.ones_like(ids))

        @torch.no_grad()
        def run(fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (), repeat: int = 1) -> Tensor:
            import copy

            cache = copy.deepcopy(prefix_cache) if keep_prefix else prefix_cache
            if repeat > 1:
                cache.batch_repeat_interleave(repeat)
            step = {k: v.repeat_interleave(repeat, dim=0) for k, v in last.items()}
            try:
                with self.hooks(fwd_hooks), running(self, step):
                    logits = self.hf_model(**step, **{self._cache_kwarg(): cache}, use_cache=True,
                                           **self._keep_last()).logits
            finally:
                self._resid_pre_store.clear()
            return logits[:, -1]

        return run

    def _forward_params(self) -> frozenset[str]:
        """Names the HF forward accepts (looked up once per model)."""
        params = self.__dict__.get("_forward_param_names")
        if params is None:
            import inspect

            params = frozenset(inspect.signature(self.hf_model.forward).parameters)
            self.__dict__["_forward_param_names"] = params
        return params

    def _cache_kwarg(self) -> str:
        """``cache`` (transformers ≥ 5.23) or ``past_key_values`` (earlier 5.x): the forward's KV-cache argument."""
        return "cache" if "cache" in self._forward_params() else "past_key_values"

    def _keep_last(self) -> dict[str, int]:
        return {"logits_to_keep": 1} if "logits_to_keep" in self._forward_params() else {}

    @torch.no_grad()
    def generate(self, inputs: Any, max_new_tokens: int = 10,
                 fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (), do_sample: bool = False,
                 return_new_tokens_only: bool = False, **generate_kwargs: Any) -> Int[Tensor, "batch seq"]:
        """Generate with the HF KV cache; ``fwd_hooks`` act on the prefill (the prompt) only.

        Patching the prompt once and decoding with the cache gives the same tokens as re-running the whole patched
        prefix at every step (the paper's loop), in a fraction of the time.

        Returns:
            ``LongTensor[batch, prompt_len + new]`` (HF convention), or only the new tokens.
        """
        from .hooks import running

        inputs = self._as_inputs(inputs)
        pad_id = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer is not None else None
        if pad_id is not None:
            generate_kwargs.setdefault("pad_token_id", pad_id)
        calls = {"n": 0}

        def prefill_only(fn: Callable) -> Callable:
            def wrapped(tensor, hook):
                return fn(tensor, hook=hook) if calls["n"] == 1 else None

            wrapped.__wrapped__ = fn
            return wrapped

        with running(self, inputs) as memo:
            def count_call(*_args, **_kwargs):
                calls["n"] += 1
                memo["decoding"] = calls["n"] > 1  # position hooks then stay out of the decoding steps

            counter = self.hf_model.register_forward_pre_hook(count_call)
            try:
                with self.hooks([(name, prefill_only(fn)) for name, fn in fwd_hooks]):
                    out = self.hf_model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                                 **generate_kwargs)
            finally:
                counter.remove()
                self._resid_pre_store.clear()
        return out[:, inputs["input_ids"].shape[1]:] if return_new_tokens_only else out

    # ------------------------------------------------------------------ unembedding and tokens
    def unembed(self, resid: Float[Tensor, "... d_model"], normalize: bool = True) -> Float[Tensor, "... d_vocab"]:
        """Final norm (unless ``normalize=False``) + unembedding: the logit-lens building block.

        Applied to the last layer's ``hook_resid_post`` this reproduces the model's logits (up to families that
        post-process logits, e.g. soft-capping, which is applied here too where the adapter declares it).
        """
        if resid.shape[-1] != self.cfg.d_model:
            from .errors import VectorError

            raise VectorError(f"Residual has width {resid.shape[-1]}, this model's d_model is {self.cfg.d_model}.")
        resid = resid.to(device=self._lm_head.weight.device, dtype=self._lm_head.weight.dtype)
        x = self._final_norm(resid) if normalize else resid
        logits = self._lm_head(x)
        cap = getattr(self.adapter.text_config(self.hf_model.config), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def to_tokens(self, text: str | Sequence[str], padding_side: str = "left") -> Int[Tensor, "batch pos"]:
        """Token ids ``[batch, pos]`` of text (left-padded)."""
        return self.prepare(text, padding_side=padding_side)["input_ids"]

    def to_str_tokens(self, tokens: str | Tensor | Sequence[int]) -> list[str] | list[list[str]]:
        """Each token as a decoded string. A 2-D tensor gives one list per row."""
        tokenizer = self._require_tokenizer()
        if isinstance(tokens, str):
            tokens = tokenizer(tokens)["input_ids"]
        if isinstance(tokens, Tensor):
            if tokens.ndim == 2:
                return [self.to_str_tokens(row) for row in tokens]
            tokens = tokens.tolist()
        return [tokenizer.decode([t]) for t in tokens]

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode ids back to text (a list for a 2-D tensor)."""
        tokenizer = self._require_tokenizer()
        if isinstance(tokens, Tensor) and tokens.ndim == 2:
            return [tokenizer.decode(row, skip_special_tokens=False) for row in tokens]
        return tokenizer.decode(tokens, skip_special_tokens=False)

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise InputError("No tokenizer: wrap the model with from_hf(model, tokenizer=...) or a processor.")
        return self.tokenizer


def _kv_cache(output: Any) -> Any:
    """The KV cache of a model output, under its transformers ≥ 5.23 name ``cache`` or the older ``past_key_values``."""
    if isinstance(output, dict) and output.get("cache") is not None:
        return output["cache"]
    return output["past_key_values"]


def _in_features(module: nn.Module) -> int | None:
    """Input width of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight ``[in, out]``)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _reachable(name: str, stop_layer: int) -> bool:
    if name in ("hook_embed", "hook_image_features"):
        return True
    if name.startswith("blocks."):
        layer = int(name.split(".")[1])
        return layer < stop_layer or (layer == stop_layer and name.endswith("hook_resid_pre"))
    return False


_TOKEN_TYPE_KEYS = ("token_type_ids", "mm_token_type_ids")


def _extend_token_types(inputs: dict[str, Any]) -> dict[str, Any]:
    """Right-extend per-token modality ids (Gemma 3 ``token_type_ids``, Qwen2-VL ``mm_token_type_ids``) that are
    shorter than ``input_ids`` with 0 (text), in place: tokens appended to a processed prompt (a generation loop
    that re-runs the whole prefix) are text, as in HF ``generate``."""
    n = inputs["input_ids"].shape[-1]
    for key in _TOKEN_TYPE_KEYS:
        value = inputs.get(key)
        if isinstance(value, Tensor) and value.ndim == 2 and value.shape[1] < n:
            inputs[key] = torch.cat([value, value.new_zeros(value.shape[0], n - value.shape[1])], dim=1)
    return inputs


def _flatten_images(images: Any, n_placeholders: list[int]) -> list:
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    flat: list = []
    for item in images:
        if isinstance(item, (list, tuple)):
            flat.extend(item)
        elif item is not None:
            flat.append(item)
    return flat


def _split_per_prompt(flat: list, counts: list[int]) -> list[list]:
    out, start = [], 0
    for count in counts:
        out.append(flat[start:start + count])
        start += count
    return out


def iter_names(model: HookedMultimodalModel, kind: str, layers: Iterable[int] | None = None) -> list[str]:
    """``blocks.{l}.{kind}`` for the given layers (all by default)."""
    layers = range(model.cfg.n_layers) if layers is None else [model.layer_index(l) for l in layers]
    return [f"blocks.{l}.{kind}" for l in layers]
