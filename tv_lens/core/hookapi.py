"""Hook names and the hook API (``add_hook``, ``hooks()``, ``reset_hooks``), TransformerLens semantics, forward and
backward alike: a hook point is bridged to its HF module while any hook function holds it (see :mod:`.sites`)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

from transformer_lens.hook_points import HookPoint

from ..errors import HookNameError, IncompatibleArgumentsError, LayerOutOfRangeError, PatchNotFiredError
from .sites import bridges_of, points_of


_EAGER_ONLY = ("attn.hook_pattern", "attn.hook_attn_scores")   # hook points served on eager attention only


class _CountingBackwardHook:
    """Wraps a backward hook function to count its calls: a backward hook that never fired is an error."""

    def __init__(self, name: str, fn: Callable) -> None:
        self.name, self.fn, self.fired = name, fn, 0
        self.optional = False   # True: never firing is no error (run_with_cache's gradient caching)
        self.__wrapped__ = fn

    def __call__(self, grad, hook):
        self.fired += 1
        return self.fn(grad, hook=hook)

    def __repr__(self) -> str:
        return f"backward hook {getattr(self.fn, '__name__', self.fn)!r} on {self.name}"


class HookAPI:
    """Mixin: hook names, name filters, attaching and removing hooks (forward and backward)."""

    # ------------------------------------------------------------------ bridges
    def _sync_site(self, hook_point: HookPoint) -> None:
        for key in bridges_of(self, hook_point.name):
            wanted = any(point.active for point in points_of(self, key))
            installed = key in self._torch_handles
            if wanted and not installed:
                from .sites import BRIDGES

                self._torch_handles[key] = BRIDGES[key[0]](self, key[1])
            elif installed and not wanted:
                for handle in self._torch_handles.pop(key):
                    handle.remove()
                if key[0] == "layer_pre":
                    self._resid_pre_store.pop(key[1], None)

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

    def _cached_by_default(self, name: str) -> bool:
        """What ``names_filter=None`` caches: TransformerLens's switches decide for ``attn.hook_result``
        (``set_use_attn_result``), ``hook_mlp_in`` (``set_use_hook_mlp_in``) and ``hook_tokens``
        (``cfg.use_hook_tokens``)."""
        if name.endswith("attn.hook_result"):
            return bool(self.__dict__.get("_use_attn_result", False))
        if name.endswith("hook_mlp_in"):
            return bool(self.__dict__.get("_use_hook_mlp_in", False))
        if name == "hook_tokens":
            return bool(self.cfg.use_hook_tokens)
        return not (name.endswith(_EAGER_ONLY) and self.attn_implementation != "eager")

    def _drop_unavailable(self, names: list[str]) -> list[str]:
        """Wildcards skip attention patterns a non-eager model cannot give, unless they select nothing else (then
        attaching raises the error that names the fix)."""
        eager = self.attn_implementation == "eager"
        kept = [n for n in names if eager or not n.endswith(_EAGER_ONLY)]
        return kept or names

    def layer_index(self, layer: int) -> int:
        """Normalise a layer index (negative counts from the end); raise if out of range."""
        n = self.cfg.n_layers
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise LayerOutOfRangeError(f"Layer must be an int, got {layer!r}.")
        if not -n <= layer < n:
            raise LayerOutOfRangeError(f"Layer {layer} is out of range: this model has {n} layers (0..{n - 1}).")
        return layer % n

    @property
    def attn_implementation(self) -> str | None:
        """The attention implementation the decoder layers run (``"eager"``, ``"sdpa"``...)."""
        attention = self._mods.attention
        config = getattr(attention[0], "config", None) if attention and attention[0] is not None else None
        config = config or self.adapter.text_config(self.hf_model.config)
        impl = getattr(config, "_attn_implementation", None)
        return "eager" if impl == "tv_lens_eager" else impl   # switched only while a score/pattern hook is held

    def _check_pattern_available(self, ran: bool = False) -> None:
        impl = self.attn_implementation
        if ran or impl != "eager":
            raise IncompatibleArgumentsError(
                f"blocks.*.attn.hook_pattern / hook_attn_scores need eager attention (tv_lens hooks it through "
                "transformers' AttentionInterface); this "
                f"model runs attn_implementation={impl!r}. Load it with attn_implementation=\"eager\" "
                "(from_pretrained(..., attn_implementation=\"eager\")) or call "
                "model.hf_model.set_attn_implementation(\"eager\"). hook_z and hook_result work with any.")

    # ------------------------------------------------------------------ TransformerLens switches
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Cache ``attn.hook_result`` (each head's output ``[batch, pos, head, d_model]``) by default. The hook
        point exists either way; it costs memory and time only while something holds it."""
        self.__dict__["_use_attn_result"] = bool(use_attn_result)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Cache ``blocks.{l}.hook_mlp_in`` (the MLP block's input, before ``ln2``) by default; it always exists."""
        self.__dict__["_use_hook_mlp_in"] = bool(use_hook_mlp_in)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Refused for ``True``: see :meth:`set_use_attn_in`."""
        self._refuse_per_head_inputs("set_use_split_qkv_input", use_split_qkv_input)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Refused for ``True``: per-head copies of the attention input (``hook_q_input`` / ``hook_k_input`` /
        ``hook_v_input``, ``hook_attn_in``) would need the HF attention rewritten to project each head from its own
        copy; we never rewrite the HF model. Raises ``UnsupportedModelError`` naming the hook points that reach the
        same effect."""
        self._refuse_per_head_inputs("set_use_attn_in", use_attn_in)

    def _refuse_per_head_inputs(self, switch: str, value: bool) -> None:
        if value:
            from ..errors import UnsupportedModelError

            raise UnsupportedModelError(
                f"{switch}(True) asks for a separate attention input per head; tv_lens runs the unmodified HF "
                "attention, which projects one shared input. Patch one head's query/key/value with "
                "blocks.{l}.attn.hook_q / hook_k / hook_v (per head, [batch, pos, head, d_head]), or the shared "
                "input with blocks.{l}.ln1.hook_normalized.")

    # ------------------------------------------------------------------ attaching
    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:
        """Attach ``hook(tensor, hook=HookPoint) -> tensor | None`` to a hook point (TransformerLens semantics;
        ``dir="bwd"`` attaches a backward hook that receives the gradient of that activation)."""
        if dir not in ("fwd", "bwd"):
            raise IncompatibleArgumentsError(f"dir={dir!r}: use 'fwd' or 'bwd'.")
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
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (),
              bwd_hooks: Sequence[tuple[str | Callable, Callable]] = (), reset_hooks_end: bool = True,
              clear_contexts: bool = False):
        """Context manager: the hooks are attached inside the block and always removed on exit, even on error.

        The block holds the model for the calling thread (another thread's call raises ``ConcurrentUseError``).
        Backward hooks receive ``(grad, hook)`` when ``.backward()`` runs inside the block; one that never fired
        by the end of the block raises :class:`~tv_lens.errors.PatchNotFiredError` (like a position hook that
        never acted), since a gradient hook that saw nothing is a silent no-op.

        Example::

            with model.hooks([("blocks.16.hook_resid_post", tvl.hooks.patch(vec[16], at="delimiter"))]):
                out = model.generate(image_query, max_new_tokens=5)
            with model.hooks(bwd_hooks=[("blocks.2.hook_resid_post", save_grad)]):
                model(tokens, return_type="loss").backward()
        """
        from ..hooks import PositionHook, check_fired

        fwd_hooks, bwd_hooks = list(fwd_hooks), list(bwd_hooks)
        for name, _ in fwd_hooks + bwd_hooks:
            if isinstance(name, str):
                self._check_name(name)
        user_fns = [getattr(fn, "__wrapped__", fn) for _, fn in fwd_hooks]
        for fn in user_fns:
            if isinstance(fn, PositionHook):
                fn.fired = 0
        counted = [(name, fn if isinstance(fn, _CountingBackwardHook) else _CountingBackwardHook(str(name), fn))
                   for name, fn in bwd_hooks]
        with self._exclusive(), super().hooks(fwd_hooks, counted, reset_hooks_end, clear_contexts) as model:
            yield model   # the block holds the model for this thread: another thread's call raises
        check_fired(user_fns)
        silent = [fn for _, fn in counted if fn.fired == 0 and not fn.optional]
        if silent and reset_hooks_end:
            raise PatchNotFiredError(
                f"{len(silent)} backward hook(s) never fired: {silent[:3]}. Call .backward() on something that "
                "depends on the hooked activation INSIDE the `with model.hooks(bwd_hooks=...)` block (hooks are "
                "removed when it ends), with gradients enabled.")
