"""The same three forward measurements done with TransformerLens's TransformerBridge and with nnsight.

Each peer gets its own copy of the HF model: ``build_bridge_from_module`` rewrites the module it is given (its
components replace submodules, and it may switch attention to eager), and nnsight wraps the module it is given, so
the raw-HF baseline must not run through either. A peer that cannot wrap a model is reported with the error, not
skipped silently.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def _layer_list(module: torch.nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def bridge_ops(hf_copy: torch.nn.Module, inputs: dict, n_layers: int, d_model: int, layer: int) -> dict[str, Callable[[], Any]]:
    """``noop / patch / cache`` closures on a TransformerBridge built around ``hf_copy`` (which it rewrites)."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    arch = type(hf_copy).__name__
    # Token ids go in directly, so the bridge needs no tokenizer of its own.
    bridge = build_bridge_from_module(hf_copy, arch, hf_config=hf_copy.config)
    ids = inputs["input_ids"]
    extra = {k: v for k, v in inputs.items() if k != "input_ids"}
    vec = torch.zeros(d_model)

    def patch_last(tensor, hook):
        tensor[:, -1] = vec
        return tensor

    names = {f"blocks.{l}.hook_resid_post" for l in range(n_layers)}
    return {
        "noop": lambda: bridge(ids, **extra),
        "patch": lambda: bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", patch_last)],
                                               **extra),
        "cache": lambda: bridge.run_with_cache(ids, names_filter=lambda n: n in names, pos_slice=-1, **extra),
    }


def nnsight_ops(hf_copy: torch.nn.Module, inputs: dict, layers_path: str, d_model: int,
                layer: int) -> dict[str, Callable[[], Any]]:
    """``noop / patch / cache`` closures with ``nnsight.NNsight`` around ``hf_copy``."""
    import nnsight

    wrapped = nnsight.NNsight(hf_copy)
    layers = _layer_list(wrapped, layers_path)
    n_layers = len(_layer_list(hf_copy, layers_path))
    vec = torch.zeros(d_model)

    def output_of(envoy):
        out = envoy.output
        return out[0] if isinstance(out, tuple) else out

    def noop():
        with wrapped.trace(**inputs):
            out = nnsight.save(wrapped.output)
        return out

    def patch():
        with wrapped.trace(**inputs):
            output_of(layers[layer])[:, -1] = vec
            out = nnsight.save(wrapped.output)
        return out

    def cache():
        with wrapped.trace(**inputs):
            saved = nnsight.save([output_of(layers[l])[:, -1] for l in range(n_layers)])
        return saved

    return {"noop": noop, "patch": patch, "cache": cache}
