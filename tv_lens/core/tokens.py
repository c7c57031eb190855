"""Token helpers with TransformerLens names and semantics; they take every input the model takes (text with
``images=``, a ``PromptBatch``, tokens), so an image prompt shows its real, expanded tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import InputError, PositionError, TokenNotFoundError
from .inputs import _is_text


class Tokens:
    """Mixin: ``to_tokens``, ``to_str_tokens``, ``to_string``, ``to_single_token``, ``get_token_position``,
    ``tokens_to_residual_directions``."""

    def to_tokens(self, input: Any, images: Any = None, prepend_bos: bool | None = None,
                  padding_side: str | None = None, move_to_device: bool = True,
                  truncate: bool = False) -> Int[Tensor, "batch pos"]:
        """Token ids ``[batch, pos]`` of any input (text is padded on ``padding_side``, default
        ``model.tokenizer.padding_side``, left unless you change it; image placeholders come out expanded into the
        image's tokens, as the model sees them).

        ``truncate=True`` cuts text to ``cfg.n_ctx`` tokens, as TransformerLens does by default; ours is ``False``:
        a prompt longer than the model reads raises ``ContextLengthError`` rather than losing its end (the query
        and the delimiter a task vector is read at) without a word."""
        if truncate and _is_text(input):
            ids = self.prepare(input, images=images, prepend_bos=prepend_bos,
                               padding_side=padding_side or self._default_padding_side(), truncate=True)["input_ids"]
        else:
            ids = self.as_inputs(input, images=images, prepend_bos=prepend_bos,
                                 padding_side=padding_side)["input_ids"]
        return ids if move_to_device else ids.cpu()

    def to_str_tokens(self, input: Any, images: Any = None, prepend_bos: bool | None = None,
                      padding_side: str | None = None) -> list[str] | list[list[str]]:
        """Each token as a decoded string: one list for a prompt or a 1-D tensor; a list of lists for a list of
        prompts (each tokenized on its own, as TransformerLens does) or a 2-D tensor / batch."""
        tokenizer = self._require_tokenizer()
        if isinstance(input, (list, tuple)) and input and all(isinstance(t, str) for t in input):
            if images is not None:
                ids = self.to_tokens(input, images=images, prepend_bos=prepend_bos, padding_side=padding_side)
                return [self.to_str_tokens(row) for row in ids]
            return [self.to_str_tokens(t, prepend_bos=prepend_bos) for t in input]
        if isinstance(input, Tensor) and (input.ndim == 1 or (input.ndim == 2 and input.shape[0] == 1)):
            return [tokenizer.decode([t]) for t in input.flatten().tolist()]   # one row: TL squeezes the batch
        if isinstance(input, Sequence) and not isinstance(input, str) and all(isinstance(t, int) for t in input):
            return [tokenizer.decode([t]) for t in input]
        ids = self.to_tokens(input, images=images, prepend_bos=prepend_bos, padding_side=padding_side)
        rows = [[tokenizer.decode([t]) for t in row.tolist()] for row in ids]
        single = isinstance(input, str) or (isinstance(input, Tensor) and input.ndim == 1)
        return rows[0] if single else rows

    def to_string(self, tokens: Tensor | Sequence[int] | int) -> str | list[str]:
        """Decode ids back to text (a list for a 2-D tensor)."""
        tokenizer = self._require_tokenizer()
        if isinstance(tokens, Tensor) and tokens.ndim == 2:
            return [tokenizer.decode(row, skip_special_tokens=False) for row in tokens]
        if isinstance(tokens, Tensor) and tokens.ndim == 0:
            tokens = [int(tokens)]
        if isinstance(tokens, int):
            tokens = [tokens]
        return tokenizer.decode(tokens, skip_special_tokens=False)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no BOS).

        Raises:
            InputError: the string is several tokens (or none), listing them.
        """
        ids = self._require_tokenizer()(string, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InputError(f"{string!r} is {len(ids)} tokens, not one: "
                             f"{[self.tokenizer.decode([t]) for t in ids]}.")
        return int(ids[0])

    def to_single_str_token(self, token: int) -> str:
        """The string of one token id (TransformerLens)."""
        decoded = self.to_str_tokens(torch.tensor([int(token)]))
        return decoded[0]

    def set_tokenizer(self, tokenizer: Any, default_padding_side: str | None = None) -> None:
        """Use another tokenizer (TransformerLens): its pad token defaults to EOS, ``default_padding_side`` (or
        ``"left"``) becomes its padding side, and whether it puts a BOS first by itself is read again."""
        from .weights import tokenizer_prepends_bos

        side = default_padding_side or "left"
        if side not in ("left", "right"):
            raise InputError(f"default_padding_side={side!r}: use 'left' or 'right'.")
        if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = side
        self.tokenizer = tokenizer
        habit = tokenizer_prepends_bos(tokenizer)
        self.__dict__["_tokenizer_bos_habit"] = habit
        self.cfg.default_prepend_bos = habit

    def get_token_position(self, single_token: str | int, input: Any, mode: str = "first",
                           prepend_bos: bool | None = None, padding_side: str | None = None) -> int:
        """Index of the first (``mode="first"``) or last occurrence of a token in a one-row input.

        Raises:
            TokenNotFoundError: the token does not occur (an ``AssertionError`` too, as TransformerLens raises);
            InputError: several rows.
        """
        if mode not in ("first", "last"):
            raise PositionError(f"mode={mode!r}: use 'first' or 'last'.")
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        ids = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
        if ids.shape[0] != 1:
            raise InputError(f"get_token_position takes one row; got {ids.shape[0]}.")
        hits = torch.nonzero(ids[0] == token).flatten()
        if hits.numel() == 0:
            raise TokenNotFoundError(f"Token {self.to_string(token)!r} (id {token}) does not occur in the input.")
        return int(hits[0] if mode == "first" else hits[-1])

    def tokens_to_residual_directions(self, tokens: str | int | Tensor) -> Float[Tensor, "... d_model"]:
        """The unembedding column of each token: ``W_U[:, token]``, ``[d_model]`` or ``[*tokens.shape, d_model]``."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        tokens = torch.as_tensor(tokens, device=self.W_U.device)
        if tokens.ndim == 0:
            return self.W_U[:, int(tokens)]
        return self.W_U[:, tokens].movedim(0, -1)
