"""Splitting a run over machines (``--shard i/n``) and checking that the pieces come back whole.

A unit of work is the smallest piece whose result does not depend on what else runs; shard ``i`` of ``n`` takes every
``n``-th unit from the ``i``-th, the same split on every machine. Every output row carries its shard's label.
"""

from __future__ import annotations

from typing import TypeVar

import pandas as pd

from ..errors import InputError

Unit = TypeVar("Unit")


def parse_shard_label(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``.

    Raises:
        ValueError: not two ints, or not ``0 <= i < n`` (the message names the rule).
    """
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n, e.g. 0/4, not {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_units(units: list[Unit], shard: tuple[int, int] | None) -> list[Unit]:
    """Every n-th unit from the i-th: the same split on every machine (``None``: all of them).

    Raises:
        InputError: more shards than units (a shard would run nothing).
    """
    if shard is None:
        return list(units)
    index, count = shard
    if count > len(units):
        raise InputError(f"--shard {index}/{count}: this run has only {len(units)} units of work; use at most "
                         f"{len(units)} shards")
    return units[index::count]


def shard_label(shard: tuple[int, int] | None) -> str:
    """The ``shard`` column's value: ``"i/n"``, or ``"0/1"`` for a whole run."""
    return f"{shard[0]}/{shard[1]}" if shard else "0/1"


def check_shards(frames: dict[str, pd.DataFrame], allow_partial: bool) -> None:
    """Each table is one shard ``i/n`` (its ``shard`` column); all share ``n``; none twice; none missing.

    Raises:
        InputError: a table with no or several shard labels, two tables of one shard, different ``n``, a missing
            shard (unless ``allow_partial``).
    """
    seen: dict[int, str] = {}
    counts = set()
    for name, frame in frames.items():
        labels = set(frame["shard"].astype(str)) if "shard" in frame else set()
        if len(labels) != 1:
            raise InputError(f"{name}: expected one shard label in its 'shard' column, found {sorted(labels)}")
        label = labels.pop()
        try:
            index, count = parse_shard_label(label)
        except ValueError:
            raise InputError(f"{name}: {label!r} is not a shard label i/n") from None
        counts.add(count)
        if index in seen:
            raise InputError(f"{seen[index]} and {name} are both shard {index}/{count}")
        seen[index] = name
    if len(counts) > 1:
        raise InputError(f"the files come from runs split differently (n = {sorted(counts)})")
    missing = sorted(set(range(counts.pop())) - set(seen))
    if missing and not allow_partial:
        raise InputError(f"shard(s) {missing} are missing (--allow-partial merges anyway)")


__all__ = ["check_shards", "parse_shard_label", "shard_label", "shard_units"]
