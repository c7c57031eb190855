"""Token sets: the distinct token ids whose probabilities a lens readout sums (:class:`TokenSet`), one shared or one
per prompt (:class:`PerPrompt`, :data:`LABEL`), as a boolean mask over the vocabulary (:func:`token_mask`).

Token sets (:func:`token_set`): a member given as an id is used as is. A member given as a string stands for the
FIRST token of that string, tried twice — as written and with one leading space (``"capital"`` → ``"capital"`` and
``" capital"``), both kept as separate members (duplicates dropped). Strings that already start with whitespace are
used as written only. Where a tokenizer gives a leading space a token of its own, that whitespace-only token is
skipped. A string that is several tokens is still counted by its first token, and a :class:`TokenSetWarning` (one
per set and call) lists those strings. Empty sets, empty strings and strings that tokenize to nothing raise
:class:`~tv_lens.errors.InputError`. Probabilities of a set are summed over its distinct members, after a softmax
over the FULL vocabulary; sets are independent, so two sets that share a token both count it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from ..errors import InputError
from ..prompts import Prompt


class TokenSetWarning(UserWarning):
    """A token-set string is several tokens: its first token stands for it."""


@dataclass(frozen=True)
class TokenSet:
    """Distinct token ids whose probabilities are summed, with what they came from.

    Attributes:
        name: the set's name (``"task"``).
        ids: distinct token ids, in the order first met.
        tokens: each id decoded.
        sources: the strings / ids the user gave.
        split: the given strings that are several tokens (counted by their first token).
    """

    name: str
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    sources: tuple[str, ...] = ()
    split: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"TokenSet({self.name!r}, tokens={list(self.tokens)})"


def first_token(model, text: str) -> tuple[int, bool]:
    """``(id, several)``: the first token of ``text`` and whether ``text`` is several tokens.

    A whitespace-only first token (a tokenizer that splits the leading space off) is skipped.
    """
    if not isinstance(text, str) or not text:
        raise InputError(f"A token-set member must be a non-empty string or an id, got {text!r}.")
    tokenizer = model._require_tokenizer()
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise InputError(f"{text!r} tokenizes to nothing; give token ids instead.")
    if text.strip():
        while len(ids) > 1 and not tokenizer.decode([ids[0]]).strip():
            ids = ids[1:]
    return int(ids[0]), len(ids) > 1


def token_set(model, members: Any, name: str = "tokens", space_variants: bool = True,
              warn: bool = True) -> TokenSet:
    """Resolve strings and ids to a :class:`TokenSet` (the rule is in the module docstring).

    Args:
        members: a string, an id, a list of them, or a ``TokenSet`` (returned renamed).
        space_variants: also try each string with a leading space (default, see the rule).
        warn: emit a :class:`TokenSetWarning` listing strings that are several tokens.

    Raises:
        InputError: an empty set, an empty string, a string that tokenizes to nothing, an id out of range.
    """
    if isinstance(members, TokenSet):
        return TokenSet(name, members.ids, members.tokens, members.sources, members.split)
    if isinstance(members, (str, int)) or (isinstance(members, Tensor) and members.ndim == 0):
        members = [members]
    members = list(members.tolist() if isinstance(members, Tensor) else members)
    if not members:
        raise InputError(f"Token set {name!r} is empty; give at least one string or token id.")
    ids: list[int] = []
    split: list[str] = []
    d_vocab = model.cfg.d_vocab
    for member in members:
        if isinstance(member, bool) or not isinstance(member, (int, str)):
            raise InputError(f"Token set {name!r}: members must be strings or ids, got {member!r}.")
        if isinstance(member, int):
            if not 0 <= member < d_vocab:
                raise InputError(f"Token set {name!r}: id {member} is outside the vocabulary [0, {d_vocab}).")
            ids.append(member)
            continue
        variants = [member] if (not space_variants or member[:1].isspace()) else [member, " " + member]
        for variant in variants:
            token_id, several = first_token(model, variant)
            ids.append(token_id)
            if several and member not in split:
                split.append(member)
    distinct = list(dict.fromkeys(ids))
    tokenizer = model._require_tokenizer()
    result = TokenSet(name, tuple(distinct), tuple(tokenizer.decode([i]) for i in distinct),
                      tuple(str(m) for m in members), tuple(split))
    if warn:
        _warn_split(name, [result], stacklevel=3)
    return result


def _warn_split(name: str, sets: Sequence[TokenSet], stacklevel: int = 3) -> None:
    split = list(dict.fromkeys(s for ts in sets for s in ts.split))
    if split:
        shown = ", ".join(repr(s) for s in split[:5]) + (f" and {len(split) - 5} more" if len(split) > 5 else "")
        warnings.warn(f"Token set {name!r}: {len(split)} string(s) are several tokens and count by their first "
                      f"token only: {shown}.", TokenSetWarning, stacklevel=stacklevel)


class PerPrompt:
    """A token set that differs per prompt: ``members(prompt)`` gives its strings / ids (e.g. the label)."""

    def __init__(self, members: Callable[[Prompt], Any], description: str = "per prompt") -> None:
        self.members = members
        self.description = description

    def __call__(self, prompt: Prompt) -> Any:
        return self.members(prompt)

    def __repr__(self) -> str:
        return f"PerPrompt({self.description})"


LABEL = PerPrompt(lambda prompt: prompt.label, "each prompt's label")
"""The answer set of the paper: each prompt's own label (its first token, with and without a leading space)."""


def token_mask(model, spec: Any, prompts: Sequence[Prompt] | None = None, name: str = "tokens",
               space_variants: bool = True, warn: bool = True,
               _stacklevel: int = 3) -> tuple[Bool[Tensor, "rows d_vocab"], list[TokenSet]]:
    """A boolean mask over the vocabulary per prompt (one row, shared, when the set is the same for all).

    ``spec``: strings / ids / a ``TokenSet`` (shared), a callable ``prompt -> members`` such as :data:`LABEL`, or
    one list of members per prompt.
    """
    per_prompt = callable(spec) and not isinstance(spec, TokenSet)
    nested = (isinstance(spec, (list, tuple)) and spec
              and all(isinstance(m, (list, tuple, TokenSet)) for m in spec))
    if per_prompt or nested:
        if prompts is None:
            raise InputError(f"Token set {name!r} differs per prompt; it needs the prompts.")
        if nested and len(spec) != len(prompts):
            raise InputError(f"Token set {name!r} gives {len(spec)} member lists for {len(prompts)} prompts.")
        sets = []
        for index, prompt in enumerate(prompts):
            members = spec(prompt) if per_prompt else spec[index]
            if members is None or (isinstance(members, (list, tuple, str)) and not members):
                raise InputError(f"Token set {name!r} is empty for prompt {index} ({prompt!r}).")
            sets.append(token_set(model, members, name, space_variants, warn=False))
    else:
        sets = [token_set(model, spec, name, space_variants, warn=False)]
    if warn:
        _warn_split(name, sets, stacklevel=_stacklevel)
    mask = torch.zeros(len(sets), model.cfg.d_vocab, dtype=torch.bool)
    for row, ts in enumerate(sets):
        mask[row, list(ts.ids)] = True
    return mask, sets


__all__ = ["LABEL", "PerPrompt", "TokenSet", "TokenSetWarning", "first_token", "token_mask", "token_set"]
