"""One input path: text (+ ``images=``), a ``PromptBatch`` / ``Prompt`` list, a processor output, or token ids all
become the same model-input dict, whichever entry point (``__call__``, ``run_with_cache``, ``run_with_hooks``,
``generate``, ``to_tokens``, ``to_str_tokens``, ``positions``) receives them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from .. import positions as _positions
from ..errors import IncompatibleArgumentsError, InputError

_TOKEN_TYPE_KEYS = ("token_type_ids", "mm_token_type_ids")


def _is_text(inputs: Any) -> bool:
    return isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and bool(inputs)
                                       and all(isinstance(t, str) for t in inputs))


def padding_mask(tokens: Int[Tensor, "batch pos"], pad_id: int | None, bos_id: int | None,
                 padding_side: str = "left") -> Int[Tensor, "batch pos"] | None:
    """The attention mask of a padded token tensor (as TransformerLens builds for tokens it padded): the run of
    ``pad_id`` at the padded end of each row is masked; where the pad id is also the BOS id, the real row's
    leading BOS (the last of a left run) is kept. ``None`` when no row is padded."""
    if pad_id is None or tokens.ndim != 2:
        return None
    is_pad = tokens == pad_id
    if padding_side == "right":
        trailing = is_pad.flip(1).long().cumprod(1).flip(1).bool()
        mask = ~trailing
    else:
        leading = is_pad.long().cumprod(1).bool()
        if bos_id is not None and bos_id == pad_id:
            n_leading = leading.sum(1)
            keep = (n_leading > 0) & (n_leading <= tokens.shape[1])
            rows = torch.nonzero(keep).flatten()
            leading[rows, n_leading[rows] - 1] = False
        mask = ~leading
    if bool(mask.all()):
        return None
    return mask.long()


def extend_token_types(inputs: dict[str, Any]) -> dict[str, Any]:
    """Right-extend per-token modality ids (Gemma 3 ``token_type_ids``, Qwen2-VL ``mm_token_type_ids``) that are
    shorter than ``input_ids`` with 0 (text), in place: tokens appended to a processed prompt are text."""
    n = inputs["input_ids"].shape[-1]
    for key in _TOKEN_TYPE_KEYS:
        value = inputs.get(key)
        if isinstance(value, Tensor) and value.ndim == 2 and value.shape[1] < n:
            inputs[key] = torch.cat([value, value.new_zeros(value.shape[0], n - value.shape[1])], dim=1)
    return inputs


def _flatten_images(images: Any) -> list:
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


class Inputs:
    """Mixin: tokenization and the one input path."""

    @property
    def input_device(self) -> torch.device:
        return self._mods.embed_tokens.weight.device

    @property
    def image_placeholder(self) -> str | None:
        """What to write in a prompt where an image goes (``None`` for text-only models)."""
        return self.adapter.image_placeholder

    def prepare(self, text: str | Sequence[str], images: Any = None, padding_side: str | None = None,
                prepend_bos: bool | None = None, truncate: bool = False,
                **processor_kwargs: Any) -> dict[str, Tensor]:
        """Tokenize text (and images) into model inputs: a padded batch on the model's device.

        Args:
            text: one prompt or a list. Write the family's image placeholder (``model.image_placeholder``,
                e.g. ``"<image>"``) where each image goes.
            images: ``None``; one PIL image; a flat list (in order over the whole batch); or one list per prompt.
            padding_side: ``"left"`` (default here: batched generation and last-token reruns need the real tokens
                at the end of every row) or ``"right"``. The TransformerLens entry points (``to_tokens``,
                ``forward``, ``run_with_cache``...) pass ``model.tokenizer.padding_side`` when not given.
            prepend_bos: ``None``: ``cfg.default_prepend_bos`` (initially whether the tokenizer puts a BOS first by
                itself; set it to ``True`` for TransformerLens's default); ``True``/``False``: exactly one leading
                BOS, or none (text only: a processor lays out image prompts itself).
            truncate: cut each prompt to ``cfg.n_ctx`` tokens (TransformerLens's ``to_tokens`` default); by default
                a prompt too long for the model raises ``ContextLengthError`` instead of losing its end silently.

        Raises:
            InputError: the number of images does not match the placeholders, or no tokenizer/processor is known.
        """
        if not isinstance(text, str) and text and not isinstance(text[0], str):
            from ..prompts import encode

            return encode(self, text)
        padding_side = padding_side or "left"
        if padding_side not in ("left", "right"):
            raise IncompatibleArgumentsError(f"padding_side={padding_side!r}: use 'left' or 'right'.")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise InputError("No text given.")
        from ..checks import check_context, check_images_per_prompt, check_texts

        check_texts(texts)
        placeholder = self.adapter.image_placeholder
        n_placeholders = [t.count(placeholder) if placeholder else 0 for t in texts]
        check_images_per_prompt(images, n_placeholders)
        flat_images = _flatten_images(images)
        if not flat_images and sum(n_placeholders):
            raise InputError(
                f"The text has {sum(n_placeholders)} image placeholder(s) {placeholder!r} but no image was given: "
                "pass images=[...] (one per placeholder, in order) to see the tokens the model reads.")
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
        if flat_images and self.adapter.render_images is not None:   # the family lays out images itself (Fuyu)
            per_prompt = _split_per_prompt(flat_images, n_placeholders)
            encoded = self.adapter.render_images(self, texts, per_prompt, padding_side)
            check_context(self, encoded["input_ids"], encoded.get("attention_mask"))
            return self._to_device(dict(encoded))
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
            if prepend_bos is not None:
                raise IncompatibleArgumentsError(
                    "prepend_bos= applies to text-only prompts; with images the family's processor lays out the "
                    "special tokens. Drop prepend_bos, or write the BOS into the text yourself.")
            kwargs = {"text": texts, self.adapter.processor_image_kwarg: _split_per_prompt(flat_images,
                                                                                            n_placeholders),
                      "return_tensors": "pt", "padding": True, **dict(self.adapter.processor_kwargs),
                      **processor_kwargs}
            tokenizer = self.processor.tokenizer
            call = lambda: self.processor(**kwargs)   # noqa: E731
        else:
            tokenizer = self._require_tokenizer()
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            want_bos = self.cfg.default_prepend_bos if prepend_bos is None else bool(prepend_bos)
            if want_bos != self._tokenizer_prepends_bos():
                if want_bos:
                    if tokenizer.bos_token is None:
                        raise InputError("prepend_bos=True but this tokenizer has no BOS token.")
                    texts = [tokenizer.bos_token + t for t in texts]
                processor_kwargs = {**processor_kwargs, "add_special_tokens": False}
            if truncate and self.cfg.n_ctx:
                processor_kwargs = {**processor_kwargs, "truncation": True, "max_length": int(self.cfg.n_ctx)}
            call = lambda: tokenizer(texts, return_tensors="pt", padding=True, **processor_kwargs)  # noqa: E731
        old_side = tokenizer.padding_side
        tokenizer.padding_side = padding_side
        try:
            encoded = call()
        finally:
            tokenizer.padding_side = old_side
        check_context(self, encoded["input_ids"], encoded.get("attention_mask"))
        return self._to_device(dict(encoded))

    def _default_padding_side(self) -> str:
        """``model.tokenizer.padding_side`` (TransformerLens's rule); ``"left"`` when there is no tokenizer."""
        tokenizer = self.tokenizer
        return getattr(tokenizer, "padding_side", None) or "left"

    def _tokenizer_prepends_bos(self) -> bool:
        """Whether the tokenizer puts a BOS first by itself (read once, when the model was built)."""
        return bool(self.__dict__.get("_tokenizer_bos_habit", False))

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise InputError("No tokenizer: wrap the model with from_hf(model, tokenizer=...) or a processor.")
        return self.tokenizer

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

    def as_inputs(self, inputs: Any, images: Any = None, prepend_bos: bool | None = None,
                  padding_side: str | None = None, attention_mask: Tensor | None = None) -> dict[str, Any]:
        """Turn any accepted input into the model-input dict (the one path every entry point takes).

        Args:
            inputs: text or a list of texts (with ``images=`` for image placeholders), a ``PromptBatch`` or list of
                ``Prompt``, a processor output dict, or token ids ``[pos]`` / ``[batch, pos]``. A padded token tensor
                gets the attention mask of its padding (``padding_side``, default left), unless ``attention_mask``
                is given.

        Raises:
            IncompatibleArgumentsError: ``images=`` with inputs that are already tokenized.
            InputError: anything else the model cannot run.
        """
        from ..prompts import Prompt, encode

        if _is_text(inputs):
            prepared = self.prepare(inputs, images=images, padding_side=padding_side or self._default_padding_side(),
                                    prepend_bos=prepend_bos)
            return prepared if attention_mask is None else self._with_mask(prepared, attention_mask)
        if images is not None:
            raise IncompatibleArgumentsError(
                "images= goes with text prompts (whose placeholders say where each image goes); these inputs are "
                f"already tokenized ({type(inputs).__name__}). Pass the text, or the processor output alone.")
        if isinstance(inputs, Prompt) or (isinstance(inputs, (list, tuple)) and inputs
                                          and all(isinstance(p, Prompt) for p in inputs)):
            return encode(self, inputs)
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
        if attention_mask is not None:
            inputs = self._with_mask(inputs, attention_mask)
        elif "attention_mask" not in inputs and self.tokenizer is not None:
            mask = padding_mask(inputs["input_ids"], self.tokenizer.pad_token_id,
                                getattr(self.tokenizer, "bos_token_id", None),
                                padding_side or self._default_padding_side())
            if mask is not None:
                inputs = {**inputs, "attention_mask": mask}
        return extend_token_types(self._to_device(inputs))

    def _with_mask(self, inputs: dict[str, Any], attention_mask: Tensor) -> dict[str, Any]:
        """``inputs`` with an explicit attention mask ``[batch, pos]`` (text or tokens alike)."""
        mask = attention_mask if attention_mask.ndim == 2 else attention_mask[None]
        if tuple(mask.shape) != tuple(inputs["input_ids"].shape):
            raise InputError(f"attention_mask has shape {tuple(mask.shape)}, the tokens "
                             f"{tuple(inputs['input_ids'].shape)}.")
        return {**inputs, "attention_mask": mask.to(inputs["input_ids"].device)}

    def position_ids_for(self, inputs: dict[str, Any], real_positions: bool = True
                         ) -> Int[Tensor, "batch pos"] | None:
        """Position ids for the forward pass. ``real_positions`` (text and token input): only real tokens count
        (TransformerLens: a masked token takes no position) — every row of a learned-position family (GPT-2), and
        rotary families whose mask has a hole inside a row. ``False`` (a processor-output dict): HF's own positions,
        exactly. Learned-position families always get them batch-shaped, so ``hook_pos_embed`` is
        ``[batch, pos, d_model]``. ``None``: leave them to HF."""
        if "position_ids" in inputs or "position_ids" not in self._forward_params():
            return None
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        learned = self._mods.pos_embed is not None
        if mask is None or not real_positions:
            if not learned:
                return None
            return torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        mask = mask.to(ids.device).long()
        if not learned:
            if self.cfg.is_multimodal:   # multimodal rotary families lay out their own (multi-axis) positions
                return None
            real = mask.bool()
            first = real.long().argmax(-1, keepdim=True)
            last = ids.shape[1] - 1 - real.flip(-1).long().argmax(-1, keepdim=True)
            ar = torch.arange(ids.shape[1], device=ids.device)
            inside = (ar >= first) & (ar <= last)
            if bool((real | ~inside).all()):   # only leading/trailing padding: HF's positions are right already
                return None
        return (mask.cumsum(-1) - 1).clamp(min=0)

    _as_inputs = as_inputs   # the name other modules used before the seam was public

    def positions(self, inputs: Any, images: Any = None) -> _positions.TokenPositions:
        """Per-row token positions of a batch: last real token, image token spans, named positions."""
        inputs = self.as_inputs(inputs, images=images)
        meta = getattr(inputs, "named_positions", None)
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        seq_len = input_ids.shape[1]
        ar = torch.arange(seq_len, device=mask.device)
        last = torch.where(mask.bool(), ar, -1).max(dim=1).values
        config = self.hf_model.config

        def images_() -> list[list[Tensor]]:   # computed only when an image position is asked for
            return [self.adapter.spans_for_row(row, config) for row in input_ids]

        return _positions.TokenPositions(seq_len=seq_len, last=last, images=images_,
                                         named=list(meta) if meta else [])
