"""HookedMultimodalModel: TransformerLens hook points on an unmodified Hugging Face VLM or causal LM.

The HF model is never rewritten. Each hook point (a TransformerLens ``HookPoint``) is bridged to the HF module it
stands for by a PyTorch hook that exists ONLY while some hook function (forward or backward) is attached to that
hook point, so a model with no active hooks runs exactly the HF code path, at the HF speed. Which module each hook
point reads is one table, :data:`tv_lens.core.sites.SITES`; the class is assembled from one mixin per job
(:mod:`tv_lens.core`).
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformer_lens.HookedRootModule import HookedRootModule

from .adapters import Adapter, adapter_for, resolve_path
from .core.blocks import Block, Norm, as_in_out
from .core.hookapi import HookAPI
from .core.inputs import Inputs
from .core.parts import Embed, HeadAnalysis, PosEmbed, Unembed
from .core.running import Running
from .core.sites import SITE_BY_SUFFIX, BridgedHookPoint
from .core.tokens import Tokens
from .core.weights import HookedModelConfig, Weights, tl_fields
from .errors import InputError, UnsupportedModelError

_PER_LAYER_FIELDS = ("attn_out", "mlp_out", "attention", "o_proj", "q_proj", "k_proj", "v_proj", "qkv_proj",
                     "mlp_in", "mlp_gate", "mlp_down", "ln1", "ln2")


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


_WEIGHT_PROCESSING = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases",
                      "refactor_factored_attn_matrices")


def _refuse_weight_processing(options: dict[str, Any]) -> None:
    """TransformerLens's weight-processing switches: ``False`` is what we do; ``True`` raises (never ignored)."""
    unknown = [k for k in options if k not in _WEIGHT_PROCESSING]
    if unknown:
        raise TypeError(f"from_hf() got an unexpected keyword argument {unknown[0]!r}.")
    asked = [k for k, v in options.items() if v]
    if asked:
        raise UnsupportedModelError(
            f"{', '.join(asked)}=True: tv_lens keeps the checkpoint's weights exactly (HF parity), like "
            "TransformerLens's HookedTransformer.from_pretrained_no_processing. Direct logit attribution still adds "
            "up: the cache applies each norm's weight (docs/transformerlens.md). Drop the option.")


def _resolve_modules(hf_model: nn.Module, adapter: Adapter) -> SimpleNamespace:
    """Every HF module the adapter names, per layer where it is per layer (``None`` where absent)."""
    mods = SimpleNamespace(
        layers=resolve_path(hf_model, adapter.layers),
        final_norm=resolve_path(hf_model, adapter.final_norm),
        lm_head=resolve_path(hf_model, adapter.lm_head),
        embed_tokens=resolve_path(hf_model, adapter.embed_tokens),
        pos_embed=resolve_path(hf_model, adapter.pos_embed) if adapter.pos_embed else None,
        image_features=resolve_path(hf_model, adapter.image_features) if adapter.image_features else None,
    )
    missing = [what for what, mod in (("decoder layers", mods.layers), ("final norm", mods.final_norm),
                                      ("lm_head", mods.lm_head), ("embed_tokens", mods.embed_tokens)) if mod is None]
    if missing:
        raise UnsupportedModelError(
            f"The {adapter.family} adapter could not find the {', '.join(missing)} of {type(hf_model).__name__}; "
            f"this transformers version may have moved them. Update the paths in "
            f"tv_lens/adapters/{adapter.family}.py.")
    for field in _PER_LAYER_FIELDS:
        paths = getattr(adapter, field)
        setattr(mods, field, [resolve_path(layer, paths) if paths else None for layer in mods.layers])
    # TransformerLens's mlp.hook_pre: the pre-activation (the gate's output in a gated MLP)
    mods.mlp_pre = [gate if gate is not None else up for gate, up in zip(mods.mlp_gate, mods.mlp_in)]
    return mods


class HookedMultimodalModel(Running, Inputs, Tokens, Weights, HeadAnalysis, HookAPI, HookedRootModule):
    """A Hugging Face VLM or causal LM with TransformerLens hook points, weights and habits.

    Hook points (``model.hook_names()`` lists them; docs/concepts.md shows the site table): ``hook_tokens`` (the
    token ids, ``[batch, pos]``; cached by default with ``cfg.use_hook_tokens``), ``hook_embed`` (the
    residual entering block 0, after image features are merged in; in families with a learned position table,
    GPT-2, the token embedding alone, and ``hook_pos_embed`` the position embedding, as in TransformerLens),
    ``hook_image_features`` (projector output,
    ``[n_images, n_image_tokens, d_model]``, multimodal families only), per decoder layer ``l``:
    ``blocks.{l}.hook_resid_pre``, ``hook_resid_mid``, ``hook_attn_out``, ``hook_mlp_out``, ``hook_resid_post``
    (= HF ``hidden_states[l + 1]``), ``ln1`` / ``ln2`` ``.hook_scale`` (read-only) and ``.hook_normalized`` (the
    norm's output), ``hook_mlp_in`` (ln2's input), ``mlp.hook_pre`` (``mlp.hook_pre_linear`` in gated MLPs),
    ``attn.hook_q/k/v`` (projections before rotary, ``[batch, pos, head, d_head]``,
    keys/values with the GQA head count), ``attn.hook_z``, ``attn.hook_result`` (each head's contribution
    ``z_h @ W_O[h]``, computed only while hooked; cached by ``names_filter=None`` after
    ``set_use_attn_result(True)``), ``attn.hook_attn_scores`` and ``attn.hook_pattern``
    (eager attention only; both writable), ``mlp.hook_post`` (the MLP's hidden activation); and
    ``ln_final.hook_scale`` (read-only) and ``ln_final.hook_normalized``.

    TransformerLens habits that work: ``model(x, return_type=..., loss_per_token=..., stop_at_layer=...,
    start_at_layer=..., prepend_bos=..., padding_side=..., attention_mask=...)``, ``input_to_embed``,
    ``run_with_cache(..., stop_at_layer=, pos_slice=, incl_bwd=True, remove_batch_dim=True,
    return_cache_object=False)``, backward hooks (``hooks(bwd_hooks=...)``, ``add_hook(name, fn, dir="bwd")``),
    ``generate`` (string in, string out; ``use_past_kv_cache``), ``embed`` / ``pos_embed`` / ``unembed`` modules (no
    final norm in ``unembed``) and ``ln_final(x)``, ``W_U/W_E/W_Q/W_K/W_V/W_O``, ``b_*``, ``W_in/W_out``, ``OV`` /
    ``QK``, ``all_head_labels``, ``all_composition_scores``, ``to_tokens/to_str_tokens/to_single_token/
    to_single_str_token/get_token_position/set_tokenizer``, ``set_use_attn_result`` / ``set_use_hook_mlp_in``, the
    ``ActivationCache`` analysis methods (direct logit attribution includes each norm's weight, see
    docs/transformerlens.md) and ``transformer_lens.utils.test_prompt``. Unknown keywords raise ``TypeError`` naming
    the nearest valid one.

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
        mods = self._mods = _resolve_modules(hf_model, self.adapter)

        d_model = int(getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd"))
        n_heads = getattr(text_config, "num_attention_heads", None) or getattr(text_config, "n_head", None)
        d_head = getattr(text_config, "head_dim", None) or (d_model // n_heads if n_heads else None)
        self.cfg = HookedModelConfig(
            model_name=model_name or getattr(hf_config, "name_or_path", "") or type(hf_model).__name__,
            family=self.adapter.family,
            architecture=type(hf_model).__name__,
            n_layers=len(mods.layers),
            d_model=d_model,
            d_vocab=int(mods.lm_head.weight.shape[0]),
            n_heads=n_heads,
            d_head=d_head,
            device=mods.embed_tokens.weight.device,
            dtype=mods.embed_tokens.weight.dtype,
            is_multimodal=self.adapter.is_multimodal,
            image_token_id=self.adapter.image_token_id(hf_config) if self.adapter.is_multimodal else None,
            **tl_fields(text_config, mods.final_norm, mods, self.tokenizer),
        )

        self.__dict__["_tokenizer_bos_habit"] = self.cfg.default_prepend_bos
        if self.tokenizer is not None and hasattr(self.tokenizer, "padding_side"):
            # Our default side (TransformerLens sets its tokenizer's side too); a later change by the user rules.
            self.tokenizer.padding_side = "left"
        self.hook_tokens = BridgedHookPoint()
        self.hook_embed = BridgedHookPoint()
        if mods.pos_embed is not None:
            self.hook_pos_embed = BridgedHookPoint()
        if mods.image_features is not None:
            self.hook_image_features = BridgedHookPoint()
        self._head_hooks = self._has_head_hooks()
        self.blocks = nn.ModuleList(Block(mods, layer, self.cfg, self.adapter.family, self._site_available)
                                    for layer in range(self.cfg.n_layers))
        self.ln_final = Norm(mods.final_norm)
        self.embed = Embed(mods.embed_tokens)
        self.pos_embed = PosEmbed(mods.pos_embed, self.adapter.family)
        self.unembed = Unembed(mods.lm_head, mods.final_norm, d_model,
                               getattr(text_config, "final_logit_softcapping", None))
        self.setup()
        # HookedRootModule.setup walks every module, HF ones included; keep only our own names.
        self.mod_dict = {k: v for k, v in self.mod_dict.items() if not k.startswith("hf_model")}
        self.hook_dict = {k: v for k, v in self.hook_dict.items() if not k.startswith("hf_model")}
        self._torch_handles: dict[tuple, list] = {}
        self._resid_pre_store: dict[int, torch.Tensor] = {}
        self.__dict__["_use_guard"] = threading.Lock()
        for hook_point in self.hook_dict.values():
            hook_point._site_changed = self._sync_site
            hook_point._paused = self._hooks_paused
        if self._head_hooks:
            for block in self.blocks:
                block.attn.hook_pattern._check_attach = self._check_pattern_available
                block.attn.hook_attn_scores._check_attach = self._check_pattern_available

    def _hooks_paused(self, point: BridgedHookPoint) -> bool:
        """Hook functions sit a call out past the prompt of ``generate(hooks_on="prompt")``, and before the first
        block of ``forward(resid, start_at_layer=k)`` (those blocks' results are discarded)."""
        if self.__dict__.get("_hooks_paused", False):
            return True
        start = self.__dict__.get("_start_layer")
        if start is None:
            return False
        name = point.name or ""
        if name.startswith("blocks."):
            return int(name.split(".", 2)[1]) < start
        return not name.startswith("ln_final.")

    def _has_head_hooks(self) -> bool:
        """Head hooks need the head layout and, in every layer, an output projection of width n_heads * d_head."""
        n_heads, d_head = self.cfg.n_heads, self.cfg.d_head
        if not n_heads or not d_head:
            return False
        return all(module is not None and as_in_out(module).shape[0] == n_heads * d_head
                   for module in self._mods.o_proj)

    def _site_available(self, suffix: str) -> bool:
        """Whether this model has the site (its module resolves in every layer, with the expected layout)."""
        site, mods, cfg = SITE_BY_SUFFIX[suffix], self._mods, self.cfg
        if suffix == "hook_resid_mid":
            return self.adapter.has_resid_mid
        if site.module in ("ln1", "ln2", "mlp_pre", "mlp_in", "mlp_down"):
            present = all(m is not None for m in getattr(mods, site.module))
            if suffix == "mlp.hook_pre_linear":   # a second pre-activation only in gated MLPs
                return present and all(m is not None for m in mods.mlp_gate)
            return present
        if site.module == "o_proj" or site.module == "attention":
            return self._head_hooks
        if site.module in ("q_proj", "k_proj", "v_proj"):
            if not cfg.n_heads or not cfg.d_head:
                return False
            which = site.module[0]
            heads = cfg.n_heads if which == "q" else (cfg.n_key_value_heads or cfg.n_heads)
            separate = getattr(mods, site.module)
            if all(m is not None and as_in_out(m).shape[1] == heads * cfg.d_head for m in separate):
                return True
            return all(m is not None and as_in_out(m).shape[1] == 3 * cfg.d_model for m in mods.qkv_proj)
        return True

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_hf(cls, model: nn.Module, processor: Any = None, tokenizer: Any = None,
                model_name: str | None = None, default_prepend_bos: bool | None = None,
                default_padding_side: str = "left", **weight_processing: Any) -> HookedMultimodalModel:
        """Wrap an HF model you already have. ``processor`` (VLMs) or ``tokenizer`` (LMs) enables text input.

        The model is put in eval mode; nothing else about it changes.

        Args:
            default_prepend_bos: ``cfg.default_prepend_bos`` (TransformerLens's ``from_pretrained`` argument);
                ``None``: whether the tokenizer adds a BOS itself.
            default_padding_side: the tokenizer's padding side, ``"left"`` unless you say ``"right"``.
            **weight_processing: TransformerLens's ``fold_ln``, ``center_writing_weights``, ``center_unembed``,
                ``fold_value_biases``, ``refactor_factored_attn_matrices``: only ``False`` is accepted.

        Raises:
            UnsupportedModelError: a weight-processing option set to ``True`` (we keep the checkpoint's weights).
        """
        _refuse_weight_processing(weight_processing)
        model.eval()
        hooked = cls(model, processor=processor, tokenizer=tokenizer, model_name=model_name).eval()
        if default_padding_side not in ("left", "right"):
            raise InputError(f"default_padding_side={default_padding_side!r}: use 'left' or 'right'.")
        if hooked.tokenizer is not None and hasattr(hooked.tokenizer, "padding_side"):
            hooked.tokenizer.padding_side = default_padding_side
        if default_prepend_bos is not None:
            hooked.cfg.default_prepend_bos = bool(default_prepend_bos)
        return hooked

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

        tl_options = {k: hf_kwargs.pop(k) for k in ("default_prepend_bos", "default_padding_side") if k in hf_kwargs}
        _refuse_weight_processing({k: hf_kwargs.pop(k) for k in _WEIGHT_PROCESSING if k in hf_kwargs})

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
            for attribute, value in adapter.processor_defaults:   # e.g. Idefics2 without image splitting (#15)
                setattr(getattr(processor, "image_processor", processor), attribute, value)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        return cls.from_hf(model, processor=processor, tokenizer=tokenizer, model_name=str(name_or_path), **tl_options)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"HookedMultimodalModel({c.model_name!r}, family={c.family}, {c.architecture}, "
                f"n_layers={c.n_layers}, d_model={c.d_model}, d_vocab={c.d_vocab}, dtype={c.dtype}, "
                f"device={c.device}, hook points={len(self.hook_dict)})")


__all__ = ["HookedModelConfig", "HookedMultimodalModel"]
