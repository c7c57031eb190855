"""Token positions, resolved per batch row after tokenization and image expansion.

A position spec is what a user passes as ``positions=`` / ``at=``:

- ``int``: the same index in every row (negative counts from the end, so ``-1`` is the last token of a
  left-padded batch);
- a list/tuple of ints: several indices, the same in every row;
- a ``LongTensor`` of shape ``[batch]`` or ``[batch, k]``: explicit per-row indices;
- a name: ``"last"`` (last real token of each row), ``"image[j]"`` (the tokens of image ``j``; negative ``j``
  counts from the last image), and the names that prompts add: ``"query_delimiter"`` (the query's ``A:``
  delimiter; ``"delimiter"`` is an alias of it), ``"delimiter[k]"`` (the k-th DEMO's delimiter; task vectors are
  read at ``"delimiter[-1]"``, the last demo's), ``"query"`` (see :mod:`tv_lens.prompts`).

:func:`resolve` turns a spec into a ``LongTensor`` ``[batch]`` (one position per row) or ``[batch, k]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import PositionError

PositionSpec = int | list | tuple | Tensor | str

_INDEXED = re.compile(r"^(?P<name>[a-z_]+)(?:\[(?P<index>-?\d+)\])?$")


class TokenPositions:
    """Where things are in each row of a tokenized (and image-expanded) batch.

    Attributes:
        seq_len: padded sequence length.
        last: ``[batch]`` index of the last real token of each row (left-padding aware).
        images: per row, one ``LongTensor`` of token indices per image, in order. May be given as a zero-argument
            callable: it then runs on first access only, so text positions (``"last"``) never pay for image spans.
        named: per row, extra named positions (``"query_delimiter"`` → the query's delimiter, ``"delimiter[k]"``
            → the k-th demo's...),
            filled in by :mod:`tv_lens.prompts`.
    """

    def __init__(self, seq_len: int, last: Int[Tensor, " batch"],
                 images: list[list[Tensor]] | Callable[[], list[list[Tensor]]],
                 named: list[dict[str, list[int]]] | None = None) -> None:
        self.seq_len = seq_len
        self.last = last
        self._images = images
        self.named = list(named) if named else []

    @property
    def images(self) -> list[list[Tensor]]:
        if callable(self._images):
            self._images = self._images()
        return self._images

    @property
    def batch_size(self) -> int:
        return int(self.last.shape[0])

    def __repr__(self) -> str:
        n_images = [len(row) for row in self.images]
        names = sorted({k for row in self.named for k in row})
        return (f"TokenPositions(batch={self.batch_size}, seq_len={self.seq_len}, last={self.last.tolist()}, "
                f"images per row={n_images}, named={names})")


def _row_index(name: str, items: list, index: int | None, row: int) -> object:
    if index is None:
        index = -1
    try:
        return items[index]
    except IndexError:
        raise PositionError(
            f"Position {name}[{index}] does not occur in row {row}: that row has {len(items)} {name} position(s)."
        ) from None


def resolve(spec: PositionSpec, positions: TokenPositions) -> Int[Tensor, " batch *k"]:
    """Resolve a position spec to per-row token indices.

    Args:
        spec: see the module docstring.
        positions: the batch's :class:`TokenPositions` (from ``model.positions(inputs)``).

    Returns:
        ``LongTensor[batch]`` for a single position per row, ``LongTensor[batch, k]`` for several
        (an image span, a list of indices).

    Raises:
        PositionError: an index out of range, an unknown name, or a position that does not occur in some row.
    """
    batch, seq_len = positions.batch_size, positions.seq_len
    device = positions.last.device
    if isinstance(spec, bool):
        raise PositionError(f"Position must be an int, list, tensor or name, not {spec!r}.")
    if isinstance(spec, int):
        index = spec + seq_len if spec < 0 else spec
        if not 0 <= index < seq_len:
            raise PositionError(f"Position {spec} is out of range for sequence length {seq_len}.")
        return torch.full((batch,), index, dtype=torch.long, device=device)
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise PositionError("An empty list of positions selects nothing.")
        return torch.stack([resolve(int(s), positions) for s in spec], dim=1)
    if isinstance(spec, Tensor):
        spec = spec.to(device=device, dtype=torch.long)
        if spec.ndim not in (1, 2) or spec.shape[0] != batch:
            raise PositionError(f"A position tensor must be [batch] or [batch, k] with batch={batch}; "
                                f"got shape {tuple(spec.shape)}.")
        spec = torch.where(spec < 0, spec + seq_len, spec)
        if (spec < 0).any() or (spec >= seq_len).any():
            raise PositionError(f"Position tensor has indices outside [0, {seq_len}).")
        return spec
    if isinstance(spec, str):
        return _resolve_name(spec.strip(), positions)
    raise PositionError(f"Cannot use {type(spec).__name__} as a position; use an int, list, tensor or name.")


def _resolve_name(spec: str, positions: TokenPositions) -> Tensor:
    device = positions.last.device
    if spec == "last":
        return positions.last.clone()
    match = _INDEXED.match(spec)
    if match is None:
        raise PositionError(f"Cannot parse position {spec!r}; " + _known_names(positions))
    name, index = match["name"], match["index"]
    index = None if index is None else int(index)
    if name == "image":
        if index is None:
            raise PositionError("Say which image: 'image[0]' is the first image, 'image[-1]' the last.")
        spans = [_row_index("image", row, index, r) for r, row in enumerate(positions.images)]
        lengths = {int(s.numel()) for s in spans}
        if len(lengths) != 1:
            raise PositionError(f"image[{index}] has different token counts across rows ({sorted(lengths)}); "
                                "select rows with the same image size, or pass a per-row tensor.")
        return torch.stack([s.to(device) for s in spans])
    if name == "query_delimiter" and index is not None:
        raise PositionError("'query_delimiter' is one token; use 'delimiter[k]' for the k-th demo's delimiter.")
    key = {"delimiter": "final_delimiter" if index is None else "demo_delimiters",
           "query_delimiter": "final_delimiter"}.get(name, name)
    if positions.named and all(key in row for row in positions.named):
        if index is None and key != "final_delimiter":  # a whole span: "query"
            spans = [row[key] for row in positions.named]
            if len({len(s) for s in spans}) != 1:
                raise PositionError(f"{name!r} has different token counts across rows "
                                    f"({sorted({len(s) for s in spans})}); use '{name}[-1]' for its last token.")
            return torch.tensor(spans, dtype=torch.long, device=device)
        values = [_row_index(name, row[key], index, r) for r, row in enumerate(positions.named)]
        return torch.tensor(values, dtype=torch.long, device=device)
    raise PositionError(f"Position {spec!r} does not occur in these inputs. " + _known_names(positions))


def _known_names(positions: TokenPositions) -> str:
    names = ["last", "image[j]"]
    if any("final_delimiter" in row for row in positions.named):
        names += ["query_delimiter (alias: delimiter)", "delimiter[k]"]
    if any("query" in row for row in positions.named):
        names += ["query", "query[k]"]
    return "Known names: " + ", ".join(names) + "; or an int / list / LongTensor."


def gather(act: Tensor, index: Tensor) -> Tensor:
    """Select per-row positions from ``act`` of shape ``[batch, pos, ...]``.

    Args:
        act: activations ``[batch, pos, ...]``.
        index: ``[batch]`` (→ ``[batch, ...]``) or ``[batch, k]`` (→ ``[batch, k, ...]``).
    """
    rows = torch.arange(act.shape[0], device=act.device)
    index = index.to(act.device)
    if index.ndim == 1:
        return act[rows, index]
    return act[rows[:, None], index]
