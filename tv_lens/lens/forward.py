"""Plumbing of the lens: the layers asked for, prompts / text / an encoded batch cut into batches, and one forward
per batch that caches ``hook_resid_post`` of those layers at the lensed positions (and stops after the deepest)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError, TaskError
from ..progress import tqdm
from ..prompts import Prompt, encode


def _layer_list(model, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.cfg.n_layers))
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise InputError("No layers requested.")
    return sorted({model.layer_index(layer) for layer in layers})


def _chunks(model, inputs: Any, batch_size: int) -> tuple[list[Prompt] | None, list, int]:
    """(prompts or None, batches to run, rows). Prompts and text are split in ``batch_size`` rows; an encoded batch
    runs as is."""
    if isinstance(inputs, Prompt):
        inputs = [inputs]
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise TaskError("No prompts to run the lens on.")
        groups = [list(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
        if all(isinstance(p, Prompt) for p in inputs):
            return list(inputs), groups, len(inputs)
        if all(isinstance(p, str) for p in inputs):
            return None, groups, len(inputs)
        raise InputError("Inputs must be prompts, strings, or one encoded batch.")
    prompts = getattr(inputs, "prompts", None)
    batch = model._as_inputs(inputs)
    return (list(prompts) if prompts else None), [batch], int(batch["input_ids"].shape[0])


def _encode(model, group: Any) -> Any:
    if isinstance(group, list) and group and isinstance(group[0], Prompt):
        return encode(model, group)
    if isinstance(group, list):
        return model.prepare(group)
    return model._as_inputs(group)


def _resid_batches(model, inputs: Any, position: Any, layers: list[int], batch_size: int, progress: bool,
                   desc: str) -> Iterator[tuple[Any, Tensor, Tensor]]:
    """Per batch: ``(batch, positions [b, k], resid [b, n_layers, k, d_model])``, one forward that stops after
    the deepest layer asked for (the final norm and unembedding of the full sequence never run)."""
    from ..positions import resolve

    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    _, groups, n_rows = _chunks(model, inputs, batch_size)
    if position == "all" and len(groups) > 1:  # every position: one batch, so all rows share one padded width
        _, groups, _ = _chunks(model, inputs, n_rows)
    for group in tqdm(groups, desc=desc, disable=not progress or len(groups) < 2, leave=False):
        batch = _encode(model, group)
        seq_len = batch["input_ids"].shape[1]
        spec = list(range(seq_len)) if position == "all" else position
        index = resolve(spec, model.positions(batch))
        index = index[:, None] if index.ndim == 1 else index
        _, cache = model.run_with_cache(batch, names_filter=names, positions=index, stop_at_layer=layers[-1] + 1)
        yield batch, index.cpu(), torch.stack([cache[name] for name in names], dim=1)
