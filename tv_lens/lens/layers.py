"""The lens over layers: ``hook_resid_post`` of every layer at one (or a few) positions, decoded in one forward per
batch → :class:`LayerLens` (top-k, entropy, probability and rank of each prompt's answer, per layer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import InputError
from ..prompts import Prompt
from .decode import _entropy, _rank, logit_lens
from .forward import _chunks, _layer_list, _resid_batches
from .tokens import first_token


@dataclass
class LayerLens:
    """The logit lens of ``hook_resid_post`` at every layer, for each row and lensed position.

    Attributes:
        layers: model layers, in order.
        top_ids / top_probs: ``[row, layer, pos, k]``.
        entropy: ``[row, layer, pos]`` in nats.
        positions: ``[row, pos]`` token index of each lensed position; ``valid`` is False on padding.
        input_tokens: per row, the token that sits at each lensed position.
        target_ids: ``[row]`` each row's target (first token of its label), or None.
        target_prob / target_rank: ``[row, layer, pos]`` for the target (rank 0 = top-1), or None.
        token_strings: the decoded top-k ids.
    """

    layers: list[int]
    top_ids: Int[Tensor, "row layer pos k"]
    top_probs: Float[Tensor, "row layer pos k"]
    entropy: Float[Tensor, "row layer pos"]
    positions: Int[Tensor, "row pos"]
    valid: Bool[Tensor, "row pos"]
    input_tokens: list[list[str]]
    token_strings: dict[int, str]
    target_ids: Int[Tensor, " row"] | None = None
    target_prob: Float[Tensor, "row layer pos"] | None = None
    target_rank: Int[Tensor, "row layer pos"] | None = None
    model_name: str = ""
    position: str = "last"

    @property
    def n_rows(self) -> int:
        return int(self.top_ids.shape[0])

    def top1(self, row: int = 0) -> list[list[str]]:
        """Top-1 token per ``[layer][pos]`` of one row."""
        return [[self.token_strings[int(i)] for i in layer] for layer in self.top_ids[row, :, :, 0]]

    def to_frame(self, k: int | None = None) -> pd.DataFrame:
        """One row per (row, layer, position): the top-``k`` tokens and probs (``top1``, ``top1_prob``, ...,
        ``top{k}``, ``top{k}_prob``), entropy, target prob and rank.

        Args:
            k: how many of the decoded tokens to show (default: all the lens kept, its ``k=``).

        Raises:
            InputError: ``k`` larger than the lens kept (run the lens with a larger ``k``) or below 1.
        """
        held = int(self.top_ids.shape[-1])
        k = held if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= held:
            raise InputError(f"k={k!r}: this lens kept the top {held} tokens; pass 1..{held}, or run the lens "
                             "with a larger k.")
        records = []
        for r in range(self.n_rows):
            for li, layer in enumerate(self.layers):
                for p in range(self.positions.shape[1]):
                    if not self.valid[r, p]:
                        continue
                    rec = {"row": r, "layer": layer, "position": int(self.positions[r, p]),
                           "input_token": self.input_tokens[r][p]}
                    for rank in range(k):
                        rec[f"top{rank + 1}"] = self.token_strings[int(self.top_ids[r, li, p, rank])]
                        rec[f"top{rank + 1}_prob"] = float(self.top_probs[r, li, p, rank])
                    rec["entropy"] = float(self.entropy[r, li, p])
                    if self.target_prob is not None:
                        rec["target_prob"] = float(self.target_prob[r, li, p])
                        rec["target_rank"] = int(self.target_rank[r, li, p])
                    records.append(rec)
        return pd.DataFrame(records)

    def by_layer(self) -> pd.DataFrame:
        """Per layer, over rows (and valid positions): mean top-1 prob, mean entropy, and with targets the mean
        target prob, mean target rank and how often the target is top-1."""
        valid = self.valid[:, None, :].expand(-1, len(self.layers), -1)
        stats = {"top1_prob": self.top_probs[..., 0], "entropy": self.entropy}
        if self.target_prob is not None:
            stats |= {"target_prob": self.target_prob, "target_rank": self.target_rank.double(),
                      "target_top1": (self.target_rank == 0).double()}
        count = valid.sum(dim=(0, 2)).double()
        frame = pd.DataFrame({name: ((values.double() * valid).sum(dim=(0, 2)) / count).numpy()
                              for name, values in stats.items()}, index=pd.Index(self.layers, name="layer"))
        return frame

    def __repr__(self) -> str:
        return (f"LayerLens({self.model_name!r}, rows={self.n_rows}, layers={len(self.layers)}, "
                f"positions per row={self.positions.shape[1]}, position={self.position!r}, "
                f"targets={'yes' if self.target_ids is not None else 'no'})")


def _label_targets(model, prompts: Sequence[Prompt] | None, targets: Any, n_rows: int) -> Tensor | None:
    if targets is False or (targets is None and (not prompts or any(p.label is None for p in prompts))):
        return None
    if targets is None:
        targets = [p.label for p in prompts]
    if isinstance(targets, (str, int)):
        targets = [targets] * n_rows
    targets = list(targets)
    if len(targets) != n_rows:
        raise InputError(f"{len(targets)} targets for {n_rows} rows.")
    ids = torch.tensor([first_token(model, t)[0] if isinstance(t, str) else int(t) for t in targets])
    if ((ids < 0) | (ids >= model.cfg.d_vocab)).any():
        raise InputError(f"Target ids must lie in [0, {model.cfg.d_vocab}).")
    return ids


@torch.no_grad()
def lens_over_layers(model, inputs: Any, position: Any = "last", layers: Sequence[int] | None = None, k: int = 5,
                     targets: Any = None, batch_size: int = 16, progress: bool = True) -> LayerLens:
    """Logit lens of every layer's ``hook_resid_post`` at ``position``, in one forward per batch.

    Args:
        inputs: prompts (``tvl.prompts.icl(...)``), text, or one encoded batch.
        position: any position spec (``"last"``, ``"delimiter"``, ``-1``, a list) or ``"all"`` (every token, all
            rows in one batch; meant for a heatmap of a few prompts).
        layers: default all.
        k: top-k kept per decoded residual.
        targets: token whose prob and rank are tracked per row: default each prompt's label (first token as
            written); a string / id for all rows, one per row, or ``False`` for none.

    Returns:
        :class:`LayerLens`.
    """
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}.")
    prompts, _, n_rows = _chunks(model, inputs, batch_size)
    layer_list = _layer_list(model, layers)
    target_ids = _label_targets(model, prompts, targets, n_rows)
    tokenizer = model._require_tokenizer()
    parts: dict[str, list] = {key: [] for key in ("ids", "probs", "entropy", "positions", "valid", "t_prob", "t_rank")}
    input_tokens: list[list[str]] = []
    row = 0
    for batch, index, resid in _resid_batches(model, inputs, position, layer_list, batch_size, progress, "lens"):
        n = index.shape[0]
        rows_target = target_ids[row:row + n].to(resid.device) if target_ids is not None else None
        per_layer: dict[str, list] = {key: [] for key in ("ids", "probs", "entropy", "t_prob", "t_rank")}
        for li in range(len(layer_list)):  # one layer at a time: [b, pos, d_vocab] is the largest tensor
            log_probs = logit_lens(model, resid[:, li], output="log_probs")
            values, ids = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)
            per_layer["ids"].append(ids.cpu())
            per_layer["probs"].append(values.exp().cpu())
            per_layer["entropy"].append(_entropy(log_probs).cpu())
            if rows_target is not None:
                expanded = rows_target[:, None].expand(log_probs.shape[:-1])
                per_layer["t_prob"].append(log_probs.gather(-1, expanded[..., None])[..., 0].exp().cpu())
                per_layer["t_rank"].append(_rank(log_probs, expanded).cpu())
        for key, values in per_layer.items():
            if values:
                parts[key].append(torch.stack(values, dim=1))
        parts["positions"].append(index)
        mask = batch.get("attention_mask")
        parts["valid"].append(mask.cpu().gather(1, index).bool() if mask is not None
                              else torch.ones_like(index, dtype=torch.bool))
        input_tokens += [[tokenizer.decode([int(t)]) for t in ids_row]
                         for ids_row in batch["input_ids"].cpu().gather(1, index)]
        row += n
    top_ids = torch.cat(parts["ids"])
    return LayerLens(
        layers=layer_list, top_ids=top_ids, top_probs=torch.cat(parts["probs"]), entropy=torch.cat(parts["entropy"]),
        positions=torch.cat(parts["positions"]), valid=torch.cat(parts["valid"]), input_tokens=input_tokens,
        token_strings={i: tokenizer.decode([i]) for i in top_ids.unique().tolist()}, target_ids=target_ids,
        target_prob=torch.cat(parts["t_prob"]) if parts["t_prob"] else None,
        target_rank=torch.cat(parts["t_rank"]) if parts["t_rank"] else None, model_name=model.cfg.model_name,
        position=str(position))


__all__ = ["LayerLens", "lens_over_layers"]
