"""Running the model: ``__call__`` / ``forward``, ``run_with_hooks``, ``run_with_cache``, ``generate`` and the
last-token runner, with TransformerLens's keywords doing what they do there and any other keyword refused with the
nearest valid one named. One model runs one forward at a time: a second thread raises ``ConcurrentUseError``."""

from __future__ import annotations

import contextlib
import difflib
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.hook_points import HookPoint

from .. import positions as _positions
from ..errors import ConcurrentUseError, IncompatibleArgumentsError, InputError, LayerOutOfRangeError
from .cache import Cache
from .inputs import _is_text
from .sites import SEQUENCE_FREE

RETURN_TYPES = (None, "logits", "loss", "both")
_INPUT_KEYWORDS = ("images", "prepend_bos", "padding_side", "attention_mask")
_FORWARD_KEYWORDS = ("return_type", "loss_per_token", "stop_at_layer", "start_at_layer", "tokens") + _INPUT_KEYWORDS
_CACHE_KEYWORDS = ("names_filter", "positions", "pos_slice", "device", "remove_batch_dim", "incl_bwd", "return_cache_object",
                   "fwd_hooks", "reset_hooks_end", "clear_contexts")
_HF_PASSTHROUGH_EXCLUDED = frozenset({"self", "input_ids", "kwargs", "args", "labels", "return_dict"})


class _StopForward(Exception):
    """Raised inside the forward pass to return early (``stop_at_layer``)."""


def _reachable(name: str, stop_layer: int, explicit: bool = True) -> bool:
    """Whether a hook point runs before the forward stops at ``stop_layer``. The stop layer's ``hook_resid_pre``
    (what ``stop_at_layer`` returns) is cached only when asked for by name: TransformerLens's cache stops before."""
    if not name.startswith(("blocks.", "ln_final.")):   # hook_tokens, hook_embed, hook_pos_embed, image features
        return True
    if name.startswith("blocks."):
        layer = int(name.split(".")[1])
        return layer < stop_layer or (explicit and layer == stop_layer and name.endswith("hook_resid_pre"))
    return False


def _runs_from(name: str, start_layer: int) -> bool:
    """Whether a hook point runs when the forward starts at block ``start_layer`` (``start_at_layer``)."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) >= start_layer
    return name.startswith("ln_final.")


def _kv_cache(output: Any) -> Any:
    """The KV cache of a model output, under its transformers ≥ 5.23 name ``cache`` or the older ``past_key_values``."""
    if isinstance(output, dict) and output.get("cache") is not None:
        return output["cache"]
    return output["past_key_values"]


def lm_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"],
            mask: Tensor | None, per_token: bool) -> Tensor:
    """Next-token cross-entropy (TransformerLens's ``lm_cross_entropy_loss``), ignoring padded targets:
    the mean over real predicted tokens, or ``[batch, pos - 1]`` with ``per_token``."""
    log_probs = logits[:, :-1].float().log_softmax(-1)
    target = tokens[:, 1:].to(log_probs.device)
    loss = -log_probs.gather(-1, target[..., None])[..., 0]
    if mask is None:
        return loss if per_token else loss.mean()
    valid = (mask[:, 1:] * mask[:, :-1]).to(loss.device).bool()   # a real token predicted from a real token
    if per_token:
        return loss * valid
    return loss[valid].mean()


def _right_padding_only(mask: Tensor | None) -> bool:
    """A mask whose zeros, if any, only end rows (right padding) — not a hole, not left padding."""
    if mask is None or mask.ndim != 2 or mask.shape[1] == 0 or bool(mask.all()):
        return False
    mask = mask.bool()
    return bool(mask[:, 0].all()) and bool((mask[:, 1:] <= mask[:, :-1]).all())


def _pos_slice_positions(pos_slice: Any, seq_len: int) -> list[int]:
    """TransformerLens's ``pos_slice`` (int, list, tuple or ``Slice``) as the list of positions it keeps."""
    import numpy as np
    from transformer_lens.utilities import Slice

    if isinstance(pos_slice, int) and not isinstance(pos_slice, bool):
        return [pos_slice]
    pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
    return [int(i) for i in np.atleast_1d(pos_slice.indices(seq_len))]


def _has_grad(name: str) -> bool:
    """Whether a hook point carries a gradient (not token ids; not a value computed beside the graph)."""
    return name != "hook_tokens" and not name.endswith("hook_scale")


def _optional_bwd(name: str, fn: Callable) -> Callable:
    """A caching backward hook that may stay silent (a cached activation the loss does not depend on)."""
    from .hookapi import _CountingBackwardHook

    hook = _CountingBackwardHook(name, fn)
    hook.optional = True
    return hook


class Running:
    """Mixin: the forward pass and everything that runs it."""

    # ------------------------------------------------------------------ keyword checking
    def _forward_params(self) -> frozenset[str]:
        """Names the HF forward accepts (looked up once per model)."""
        params = self.__dict__.get("_forward_param_names")
        if params is None:
            import inspect

            params = frozenset(inspect.signature(self.hf_model.forward).parameters)
            self.__dict__["_forward_param_names"] = params
        return params

    def _check_keywords(self, given: dict[str, Any], ours: Sequence[str], entry: str) -> None:
        """Refuse keywords that are neither ours nor named parameters of the HF forward (they would be swallowed
        by its ``**kwargs``), naming the nearest valid one."""
        valid = set(ours) | (self._forward_params() - _HF_PASSTHROUGH_EXCLUDED)
        unknown = [k for k in given if k not in valid]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{entry}() got an unexpected keyword argument {key!r}.{hint} It takes "
                            f"{', '.join(sorted(ours))} and the HF forward's own keywords.")

    # ------------------------------------------------------------------ one forward at a time
    @contextmanager
    def _exclusive(self):
        """Hold the model for this thread (re-entrant); another thread's call raises ConcurrentUseError."""
        me = threading.get_ident()
        guard = self.__dict__["_use_guard"]
        with guard:
            owner = self.__dict__.get("_use_owner")
            if owner is not None and owner != me:
                raise ConcurrentUseError(
                    "This model is running in another thread. Hooks, caches and position state live on the model, "
                    "so two threads at once would mix them: use one model per thread (load it twice), or a lock.")
            self.__dict__["_use_owner"] = me
            self.__dict__["_use_depth"] = self.__dict__.get("_use_depth", 0) + 1
        try:
            yield
        finally:
            with guard:
                self.__dict__["_use_depth"] -= 1
                if self.__dict__["_use_depth"] == 0:
                    self.__dict__["_use_owner"] = None

    # ------------------------------------------------------------------ forward
    def forward(self, input: Any, return_type: str | None = "logits", loss_per_token: bool = False,
                stop_at_layer: int | None = None, images: Any = None, prepend_bos: bool | None = None,
                padding_side: str | None = None, attention_mask: Tensor | None = None,
                start_at_layer: int | None = None, tokens: Tensor | None = None,
                **forward_kwargs: Any) -> Any:
        """Run the model with whatever hooks are attached (TransformerLens ``HookedTransformer.forward``).

        Args:
            input: text (with ``images=`` for placeholders), a ``PromptBatch``, a processor output, or tokens
                ``[batch, pos]`` (padded rows get their attention mask).
            return_type: ``"logits"`` ``[batch, pos, d_vocab]``; ``"loss"`` (next-token cross-entropy, padded
                targets ignored); ``"both"`` ``(logits, loss)``; ``None``.
            loss_per_token: the loss as ``[batch, pos - 1]`` instead of its mean.
            stop_at_layer: run blocks ``0 .. stop_at_layer - 1`` only and return the residual stream entering
                block ``stop_at_layer`` ``[batch, pos, d_model]``.
            prepend_bos / padding_side / attention_mask: as in TransformerLens (text / tokens).
            start_at_layer: ``input`` is then the residual stream entering that block ``[batch, pos, d_model]``
                (e.g. from ``input_to_embed`` or ``stop_at_layer``); blocks ``start_at_layer ..`` run on it.
                ``tokens=`` gives the targets for ``return_type="loss"``. (The HF model still runs the earlier
                blocks on zeros and the result is discarded: we never rewrite its forward.)
            **forward_kwargs: named parameters of the HF forward (``pixel_values``...); anything else raises
                ``TypeError`` naming the nearest valid keyword.
        """
        self._check_keywords(forward_kwargs, _FORWARD_KEYWORDS, "forward")
        if return_type not in RETURN_TYPES:
            raise IncompatibleArgumentsError(f"return_type={return_type!r}: use one of {RETURN_TYPES}.")
        if start_at_layer is not None:
            return self._forward_from(input, start_at_layer, stop_at_layer, return_type, loss_per_token, tokens,
                                      attention_mask, forward_kwargs)
        inputs = self.as_inputs(input, images=images, prepend_bos=prepend_bos, padding_side=padding_side,
                                attention_mask=attention_mask)
        if stop_at_layer is not None:
            stop = self._stop_layer(stop_at_layer)
            store: dict[str, Tensor] = {}
            name = f"blocks.{stop}.hook_resid_pre" if stop < self.cfg.n_layers else \
                f"blocks.{self.cfg.n_layers - 1}.hook_resid_post"
            self._run_until(inputs, stop, [(name, lambda t, hook: store.__setitem__("x", t))], forward_kwargs,
                            real_positions=not isinstance(input, dict))
            return store["x"]
        logits = self._run(inputs, real_positions=not isinstance(input, dict), **forward_kwargs)
        if return_type in (None, "logits"):
            return None if return_type is None else logits
        loss = lm_loss(logits, inputs["input_ids"], inputs.get("attention_mask"), loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def input_to_embed(self, input: Any, prepend_bos: bool | None = None, padding_side: str | None = None,
                       attention_mask: Tensor | None = None, images: Any = None
                       ) -> tuple[Float[Tensor, "batch pos d_model"], Int[Tensor, "batch pos"], None, Tensor | None]:
        """TransformerLens's ``input_to_embed``: ``(residual entering block 0, tokens, None, attention_mask)``.
        The third element (TransformerLens's shortformer position embedding) is always ``None``: position
        embeddings are already in the residual or, with rotary positions, inside attention."""
        inputs = self.as_inputs(input, images=images, prepend_bos=prepend_bos, padding_side=padding_side,
                                attention_mask=attention_mask)
        store: dict[str, Tensor] = {}
        self._run_until(inputs, 0, [("blocks.0.hook_resid_pre", lambda t, hook: store.__setitem__("x", t))], {},
                        real_positions=not isinstance(input, dict))
        return store["x"], inputs["input_ids"], None, inputs.get("attention_mask")

    def _forward_from(self, resid: Tensor, start_at_layer: int, stop_at_layer: int | None, return_type: str | None,
                      loss_per_token: bool, tokens: Tensor | None, attention_mask: Tensor | None,
                      forward_kwargs: dict) -> Any:
        """``forward(resid, start_at_layer=k)``: the HF forward with block ``k``'s input replaced by ``resid``."""
        from ..hooks import running

        n = self.cfg.n_layers
        if not isinstance(resid, Tensor) or not resid.is_floating_point() or resid.ndim != 3 \
                or resid.shape[-1] != self.cfg.d_model:
            raise InputError("With start_at_layer, the input is the residual stream [batch, pos, d_model] "
                             "(model.input_to_embed(x)[0], or forward(x, stop_at_layer=k)).")
        if not isinstance(start_at_layer, int) or not -n <= start_at_layer < n:
            raise LayerOutOfRangeError(f"start_at_layer={start_at_layer!r} must be an int in [-{n}, {n - 1}].")
        start = start_at_layer % n
        if return_type in ("loss", "both") and tokens is None:
            raise IncompatibleArgumentsError("return_type='loss' with start_at_layer needs tokens= (the targets).")
        device = self.input_device
        resid = resid.to(device=device, dtype=self.cfg.dtype)

        def replace(module, args, kwargs):
            if args:
                return (resid, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": resid}

        dummy = torch.zeros(resid.shape[:2], dtype=torch.long, device=device)
        inputs = {"input_ids": dummy}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask.to(device)
        handle = self._mods.layers[start].register_forward_pre_hook(replace, with_kwargs=True, prepend=True)
        self.__dict__["_start_layer"] = start   # hook points before block `start` sit this run out
        try:
            if stop_at_layer is not None:
                stop = self._stop_layer(stop_at_layer)
                if stop <= start:
                    raise IncompatibleArgumentsError(f"stop_at_layer={stop_at_layer} is not after "
                                                     f"start_at_layer={start_at_layer}.")
                store: dict[str, Tensor] = {}
                name = f"blocks.{stop}.hook_resid_pre" if stop < n else f"blocks.{n - 1}.hook_resid_post"
                self._run_until(inputs, stop, [(name, lambda t, hook: store.__setitem__("x", t))], forward_kwargs)
                return store["x"]
            forward_kwargs = {"use_cache": False, **forward_kwargs}
            model_inputs = {"inputs_embeds": torch.zeros_like(resid), **{k: v for k, v in inputs.items()
                                                                         if k != "input_ids"}}
            with self._exclusive(), running(self, inputs):
                logits = self.hf_model(**model_inputs, **forward_kwargs).logits
        finally:
            handle.remove()
            self.__dict__["_start_layer"] = None
            self._resid_pre_store.clear()
        if return_type in (None, "logits"):
            return None if return_type is None else logits
        tokens = tokens if tokens.ndim == 2 else tokens[None]
        loss = lm_loss(logits, tokens, attention_mask, loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def _stop_layer(self, stop_at_layer: Any) -> int:
        n = self.cfg.n_layers
        if not isinstance(stop_at_layer, int) or isinstance(stop_at_layer, bool) or not -n <= stop_at_layer <= n:
            raise LayerOutOfRangeError(f"stop_at_layer={stop_at_layer!r} must be an int in [-{n}, {n}].")
        return stop_at_layer % n if stop_at_layer < 0 else stop_at_layer

    def _run(self, inputs: dict[str, Any], real_positions: bool = True, **forward_kwargs: Any) -> Tensor:
        """The HF forward on ``inputs``. ``real_positions``: masked tokens take no position (TransformerLens; for
        text and token input); ``False`` (a processor-output dict): the positions HF's forward gives it."""
        from ..hooks import running

        forward_kwargs.setdefault("use_cache", False)
        model_inputs = {k: v for k, v in inputs.items() if k != "offset_mapping"}
        if real_positions and _right_padding_only(model_inputs.get("attention_mask")):
            # Trailing pads cannot reach a real token (causal); without the mask they run as TransformerLens runs
            # them, so a full explicit mask and no mask give the same logits. Loss and positions still use it.
            model_inputs.pop("attention_mask")
        position_ids = self.position_ids_for(model_inputs, real_positions)
        if position_ids is not None and "position_ids" not in forward_kwargs:
            model_inputs["position_ids"] = position_ids
        with self._exclusive(), running(self, inputs):
            return self.hf_model(**model_inputs, **forward_kwargs).logits

    def _run_until(self, inputs: dict[str, Any], stop_layer: int | None, hooks: list, forward_kwargs: dict,
                   bwd_hooks: Sequence = (), backward: bool = False, real_positions: bool = True) -> Tensor | None:
        """Run with ``hooks`` attached, stopping before block ``stop_layer`` (``None``: run it all)."""

        def stop(*_args, **_kwargs):
            raise _StopForward

        stop_handle = None
        try:
            with self.hooks(hooks, bwd_hooks):
                if stop_layer is not None:
                    # Registered after the bridges, so the hooks on this layer's input run first.
                    target = (self._mods.layers[stop_layer] if stop_layer < self.cfg.n_layers
                              else self._mods.final_norm)
                    stop_handle = target.register_forward_pre_hook(stop)
                try:
                    out = self._run(inputs, real_positions=real_positions, **forward_kwargs)
                except _StopForward:
                    return None
                if backward:
                    out = lm_loss(out, inputs["input_ids"], inputs.get("attention_mask"), False)
                    out.backward()
                return out
        finally:
            if stop_handle is not None:
                stop_handle.remove()
            self._resid_pre_store.clear()

    def run_with_hooks(self, input: Any, fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (),
                       bwd_hooks: Sequence[tuple[str | Callable, Callable]] = (), reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **kwargs: Any) -> Any:
        """Run with temporary hooks (removed afterwards, also on error); takes ``forward``'s keywords.

        Raises:
            IncompatibleArgumentsError: ``bwd_hooks`` with ``reset_hooks_end=True`` (they would be gone before any
                backward pass could reach them): use ``with model.hooks(bwd_hooks=...)`` and call ``.backward()``
                inside, or ``reset_hooks_end=False``.
        """
        if bwd_hooks and reset_hooks_end:
            raise IncompatibleArgumentsError(
                "run_with_hooks removes its hooks when it returns, before any .backward(): the backward hooks "
                "would never fire. Use `with model.hooks(bwd_hooks=...): model(x, return_type='loss').backward()` "
                "or pass reset_hooks_end=False (then call model.reset_hooks() yourself).")
        self._check_keywords(kwargs, _FORWARD_KEYWORDS, "run_with_hooks")
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            return self(input, **kwargs)

    def run_with_cache(self, input: Any, names_filter: Any = None, positions: Any = None, pos_slice: Any = None,
                       stop_at_layer: int | None = None, fwd_hooks: Sequence = (), device: Any = None,
                       remove_batch_dim: bool = False, incl_bwd: bool = False, return_cache_object: bool = True,
                       return_type: str | None = "logits", images: Any = None, prepend_bos: bool | None = None,
                       padding_side: str | None = None, attention_mask: Tensor | None = None,
                       **forward_kwargs: Any) -> tuple[Any, ActivationCache | dict[str, Tensor]]:
        """Run once and keep activations (TransformerLens semantics, plus ``positions=``).

        Args:
            input: anything ``forward`` takes.
            names_filter: ``None`` (all), a name, a glob like ``"blocks.*.hook_resid_post"``, a list, or a predicate.
            positions: keep only these token positions (see :mod:`tv_lens.positions`); the position axis stays,
                so ``cache[name]`` is ``[batch, k, ...]`` (``k = 1`` for ``"last"``, ``-1``, ``"delimiter"``) and the
                cache's ``pos_slice`` arguments index the kept positions. ``hook_image_features`` is kept whole.
            pos_slice: TransformerLens's spelling of the same: an int (the axis stays, length 1), a list of ints,
                a ``(start, stop[, step])`` tuple or a ``transformer_lens.utilities.Slice``; not with ``positions``.
            stop_at_layer: run only blocks ``0 .. stop_at_layer - 1``; the first element is then the residual
                stream entering block ``stop_at_layer`` ``[batch, pos, d_model]`` (as ``forward`` returns it).
            fwd_hooks: extra hooks (e.g. a patch) active during this run; they run before the caching hooks.
            device: move cached tensors there.
            remove_batch_dim: drop the batch axis (batch size 1 only).
            incl_bwd: also run ``.backward()`` on the loss (``return_type="loss"``) and cache each gradient as
                ``name + "_grad"`` (read-only and integer hook points have none).
            return_cache_object: ``False`` returns a plain dict.
            return_type: what the first element is (``forward``'s ``return_type``).

        Returns:
            ``(logits | loss | (logits, loss) | None, ActivationCache)``.

        Raises:
            HookNameError: a name or pattern that matches no hook point.
            IncompatibleArgumentsError: a requested hook lies past ``stop_at_layer``; ``incl_bwd`` with
                ``stop_at_layer``; ``remove_batch_dim`` with a batch of several.
            PositionError: a position that is out of range or does not occur in some row.
        """
        self._check_keywords(forward_kwargs, _FORWARD_KEYWORDS + _CACHE_KEYWORDS, "run_with_cache")
        if return_type not in RETURN_TYPES:
            raise IncompatibleArgumentsError(f"return_type={return_type!r}: use one of {RETURN_TYPES}.")
        if forward_kwargs.get("start_at_layer") is not None:
            if incl_bwd or positions is not None or pos_slice is not None or remove_batch_dim:
                raise IncompatibleArgumentsError("With start_at_layer, run_with_cache takes names_filter, "
                                                 "stop_at_layer, fwd_hooks, device and return_cache_object.")
            return self._cache_from(input, names_filter, stop_at_layer, fwd_hooks, device, return_cache_object,
                                    return_type, attention_mask, forward_kwargs)
        inputs = self.as_inputs(input, images=images, prepend_bos=prepend_bos, padding_side=padding_side,
                                attention_mask=attention_mask)
        if remove_batch_dim and inputs["input_ids"].shape[0] != 1:
            raise IncompatibleArgumentsError(f"remove_batch_dim=True needs a batch of one; this one has "
                                             f"{inputs['input_ids'].shape[0]} rows.")
        if pos_slice is not None:
            if positions is not None:
                raise IncompatibleArgumentsError("pos_slice= and positions= both select positions: pass one.")
            positions = _pos_slice_positions(pos_slice, inputs["input_ids"].shape[1])
        names = self._expand_names(names_filter)
        explicit = names_filter is not None and not callable(names_filter) and not any(
            ch in p for p in ([names_filter] if isinstance(names_filter, str) else names_filter) for ch in "*?[")
        stop_layer = None
        if stop_at_layer is not None:
            if incl_bwd:
                raise IncompatibleArgumentsError("incl_bwd=True needs the loss, which stop_at_layer never computes.")
            stop_layer = self._stop_layer(stop_at_layer)
            reachable = [nm for nm in names if _reachable(nm, stop_layer, explicit)]
            if explicit and len(reachable) < len(names):
                beyond = [nm for nm in names if nm not in reachable]
                raise IncompatibleArgumentsError(
                    f"stop_at_layer={stop_at_layer} stops before {beyond[:3]}{'...' if len(beyond) > 3 else ''} "
                    "run; raise stop_at_layer or drop those names.")
            names = reachable
            stop_name = (f"blocks.{stop_layer}.hook_resid_pre" if stop_layer < self.cfg.n_layers
                         else f"blocks.{self.cfg.n_layers - 1}.hook_resid_post")
        index = None
        if positions is not None:
            index = _positions.resolve(positions, self.positions(inputs))
            index = index[:, None] if index.ndim == 1 else index   # keep a position axis

        store: dict[str, Tensor] = {}

        def keep(tensor: Tensor, name: str) -> None:
            kept = tensor.detach()
            if index is not None and name.split("_grad")[0].endswith(("attn.hook_pattern", "attn.hook_attn_scores")):
                kept = _positions.gather(kept.transpose(1, 2), index).transpose(1, 2)   # [batch, head, k, key]
            elif index is not None and name not in SEQUENCE_FREE and not name.startswith("hook_image_features"):
                kept = _positions.gather(kept, index)
            if remove_batch_dim and name not in SEQUENCE_FREE:
                kept = kept[0]
            store[name] = kept if device is None else kept.to(device)

        def save(tensor: Tensor, hook: HookPoint) -> None:
            keep(tensor, hook.name)

        def save_grad(grad: Tensor, hook: HookPoint) -> None:
            keep(grad, hook.name + "_grad")

        bwd = [(name, _optional_bwd(name, save_grad)) for name in names if _has_grad(name)] if incl_bwd else []
        extra = []
        if stop_layer is not None:   # the residual entering the stop layer, whether cached or not
            extra = [(stop_name, lambda t, hook: store.__setitem__("__stop__", t))]
        if incl_bwd and return_type != "loss":
            raise IncompatibleArgumentsError("incl_bwd=True runs .backward() on the loss; pass return_type='loss'.")
        with torch.enable_grad() if incl_bwd else contextlib.nullcontext():
            out = self._run_until(inputs, stop_layer, list(fwd_hooks) + [(name, save) for name in names] + extra,
                                  dict(forward_kwargs), bwd_hooks=bwd, backward=incl_bwd,
                                  real_positions=not isinstance(input, dict))
        stopped = store.pop("__stop__", None)
        ordered = {name: store[name] for name in names if name in store}
        if incl_bwd:
            ordered.update({f"{n}_grad": store[f"{n}_grad"] for n in names if f"{n}_grad" in store})
        result = stopped if stop_layer is not None else self._shape_output(out, inputs, return_type, incl_bwd)
        if not return_cache_object:
            return result, ordered
        return result, Cache(ordered, self, has_batch_dim=not remove_batch_dim)

    def _cache_from(self, resid: Tensor, names_filter: Any, stop_at_layer: int | None, fwd_hooks: Sequence,
                    device: Any, return_cache_object: bool, return_type: str | None,
                    attention_mask: Tensor | None, forward_kwargs: dict) -> tuple[Any, Any]:
        """``run_with_cache(resid, start_at_layer=k)``: cache what runs from block ``k`` on (TransformerLens)."""
        start = forward_kwargs.pop("start_at_layer")
        n = self.cfg.n_layers
        first = start % n if isinstance(start, int) and -n <= start < n else start
        names = [nm for nm in self._expand_names(names_filter) if not isinstance(first, int) or _runs_from(nm, first)]
        if stop_at_layer is not None:
            stop = self._stop_layer(stop_at_layer)
            names = [nm for nm in names if _reachable(nm, stop, explicit=False)]
        store: dict[str, Tensor] = {}

        def save(tensor: Tensor, hook: HookPoint) -> None:
            kept = tensor.detach()
            store[hook.name] = kept if device is None else kept.to(device)

        with self.hooks(list(fwd_hooks) + [(nm, save) for nm in names]):
            out = self.forward(resid, start_at_layer=start, stop_at_layer=stop_at_layer, return_type=return_type,
                               attention_mask=attention_mask, **forward_kwargs)
        ordered = {nm: store[nm] for nm in names if nm in store}
        return out, (Cache(ordered, self) if return_cache_object else ordered)

    def _shape_output(self, out: Tensor | None, inputs: dict, return_type: str | None, was_loss: bool) -> Any:
        if out is None or return_type is None:
            return None
        if was_loss:
            if return_type == "loss":
                return out.detach()
            raise IncompatibleArgumentsError("incl_bwd=True runs the model for its loss; use return_type='loss'.")
        if return_type == "logits":
            return out
        loss = lm_loss(out, inputs["input_ids"], inputs.get("attention_mask"), False)
        return loss if return_type == "loss" else (out, loss)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input: Any, max_new_tokens: int = 10,
                 fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (), do_sample: bool = False,
                 return_new_tokens_only: bool = False, return_type: str = "input", verbose: bool = False,
                 images: Any = None, prepend_bos: bool | None = None, padding_side: str | None = None,
                 use_past_kv_cache: bool = True, hooks_on: str = "every_step",
                 **generate_kwargs: Any) -> Int[Tensor, "batch seq"] | str | list[str]:
        """Generate with the HF KV cache, with hooks active (TransformerLens ``generate``).

        Hooks given as ``fwd_hooks`` and hooks attached with ``with model.hooks(...)`` behave the same: a plain
        hook runs on every forward call (the prompt, then each new token: ``[batch, 1, ...]`` with the KV cache),
        as in TransformerLens; a position hook (``tvl.hooks.patch(v, at="delimiter")``) acts on the prompt only,
        where its position is. ``hooks_on="prompt"`` runs every hook on the prompt only.

        Patching the prompt once and decoding with the cache gives the same tokens as re-running the whole patched
        prefix at every step (the paper's loop), in a fraction of the time.

        Args:
            return_type: ``"input"`` (default, as in TransformerLens: text for text input, else tokens),
                ``"tokens"`` (``LongTensor[batch, prompt_len + new]``, HF convention) or ``"str"`` (the decoded
                text, a list for a batch).
            use_past_kv_cache: ``False`` re-runs the whole sequence at every step (HF ``use_cache=False``).
            hooks_on: ``"every_step"`` (default) or ``"prompt"``.
            verbose: show a progress bar over the generated tokens.
            **generate_kwargs: HF ``generate`` options (``temperature``, ``top_k``...); others raise TypeError.
        """
        from transformers import GenerationConfig

        from ..hooks import running

        if return_type not in ("tokens", "str", "input"):
            raise IncompatibleArgumentsError(f"return_type={return_type!r}: use 'tokens', 'str' or 'input'.")
        if hooks_on not in ("every_step", "prompt"):
            raise IncompatibleArgumentsError(f"hooks_on={hooks_on!r}: use 'every_step' or 'prompt'.")
        generate_kwargs.setdefault("use_cache", bool(use_past_kv_cache))
        if hooks_on == "prompt" and not generate_kwargs["use_cache"]:
            raise IncompatibleArgumentsError(
                "hooks_on='prompt' needs the KV cache (without it every step re-runs the prompt, hooks included); "
                "drop use_past_kv_cache=False.")
        allowed = set(GenerationConfig().to_dict()) | {"streamer", "logits_processor", "stopping_criteria"}
        self._check_keywords(generate_kwargs, sorted(allowed | {"fwd_hooks", "do_sample", "return_type",
                                                                "return_new_tokens_only", "verbose"}
                                                     | set(_INPUT_KEYWORDS)), "generate")
        # HF decodes a batch correctly only when it is left-padded
        inputs = self.as_inputs(input, images=images, prepend_bos=prepend_bos, padding_side=padding_side or "left")
        pad_id = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer is not None else None
        if pad_id is not None:
            generate_kwargs.setdefault("pad_token_id", pad_id)
        calls = {"n": 0}
        bar = None
        if verbose:
            from ..progress import tqdm

            bar = tqdm(total=max_new_tokens, desc="generate", leave=False)

        with self._exclusive(), running(self, inputs) as memo:
            def count_call(*_args, **_kwargs):
                calls["n"] += 1
                # position hooks stay out of the one-token decoding steps (without a KV cache each step is the
                # whole sequence again, prompt positions included)
                memo["decoding"] = calls["n"] > 1 and generate_kwargs["use_cache"]
                self.__dict__["_hooks_paused"] = hooks_on == "prompt" and calls["n"] > 1
                if bar is not None:
                    bar.update(1)

            counter = self.hf_model.register_forward_pre_hook(count_call)
            try:
                with self.hooks(fwd_hooks):
                    out = self.hf_model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                                 **generate_kwargs)
            finally:
                counter.remove()
                self.__dict__["_hooks_paused"] = False
                self._resid_pre_store.clear()
                if bar is not None:
                    bar.close()
        tokens = out[:, inputs["input_ids"].shape[1]:] if return_new_tokens_only else out
        as_text = return_type == "str" or (return_type == "input" and _is_text(input))
        if not as_text:
            return tokens
        text = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return text[0] if isinstance(input, str) else text

    # ------------------------------------------------------------------ last-token re-runs
    @torch.no_grad()
    def run_last_token(self, inputs: Any, fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (),
                       repeat: int = 1) -> Float[Tensor, "batch_x_repeat d_vocab"]:
        """Logits at the last token, re-running ONLY that token (``repeat`` copies per row) on the clean prefix's
        KV cache, with ``fwd_hooks`` active on that step.

        This is exact for hooks that act at the last position: no earlier position can see the change. Rows come
        out interleaved, row ``b * repeat + g`` is copy ``g`` of prompt ``b``; hooks resolve positions on the
        one-token step (``-1`` / ``"last"``), and ``rows=`` selects copies.

        Raises:
            IncompatibleArgumentsError: for families whose positions depend on more than the cache length.
        """
        return self.last_token_runner(inputs, keep_prefix=False)(fwd_hooks, repeat)

    @torch.no_grad()
    def last_token_runner(self, inputs: Any, keep_prefix: bool = True
                          ) -> Callable[..., Float[Tensor, "batch_x_repeat d_vocab"]]:
        """Run the prefix (all but the last token) of ``inputs`` ONCE; return ``run(fwd_hooks=(), repeat=1)``, which
        does what :meth:`run_last_token` does on that cached prefix, as often as asked — each call on a fresh copy
        of the cache (``keep_prefix=False``: a single call, no copy)."""
        from ..hooks import running

        if not self.adapter.prefix_reuse:
            raise IncompatibleArgumentsError(f"{self.cfg.family} cannot re-run a last token on a cached prefix; "
                                             "run the whole prompt (model.run_with_hooks).")
        inputs = self.as_inputs(inputs)
        ids = inputs["input_ids"]
        if ids.shape[1] < 2:
            raise InputError("run_last_token needs prompts of at least two tokens.")
        per_token = {k for k, v in inputs.items() if isinstance(v, Tensor) and v.ndim >= 2
                     and tuple(v.shape[:2]) == tuple(ids.shape)}
        prefix = {k: (v[:, :-1] if k in per_token else v) for k, v in inputs.items()}
        with self._exclusive(), running(self, prefix):
            prefix_cache = _kv_cache(self.hf_model(**prefix, use_cache=True))
        last = {k: inputs[k][:, -1:] for k in per_token if k != "attention_mask"}
        last["attention_mask"] = inputs.get("attention_mask", torch.ones_like(ids))
        params = self._forward_params()
        cache_kwarg = "cache" if "cache" in params else "past_key_values"
        keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

        @torch.no_grad()
        def run(fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (), repeat: int = 1) -> Tensor:
            import copy

            cache = copy.deepcopy(prefix_cache) if keep_prefix else prefix_cache
            if repeat > 1:
                cache.batch_repeat_interleave(repeat)
            step = {k: v.repeat_interleave(repeat, dim=0) for k, v in last.items()}
            try:
                with self._exclusive(), self.hooks(fwd_hooks), running(self, step):
                    logits = self.hf_model(**step, **{cache_kwarg: cache}, use_cache=True, **keep_last).logits
            finally:
                self._resid_pre_store.clear()
            return logits[:, -1]

        return run
