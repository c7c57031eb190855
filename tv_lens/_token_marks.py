"""Where the marks of a rendered prompt (character offsets: the answers, the query) land in the processor's tokens.

The text is tokenized on its own with character offsets; that tokenization is aligned with the processor's tokens
(which insert image tokens and wrapper tokens); each mark maps to the token(s) holding its characters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from jaxtyping import Int
from torch import Tensor

from .errors import InputError


class _UnalignedError(InputError):
    """A named token of the plain tokenization has no counterpart in the processor's tokens."""


def named_positions(model, text: str, marks: dict[str, list[int]], ids: Int[Tensor, " pos"],
                    mask: Int[Tensor, " pos"], merges: list[str]) -> dict[str, list[int]]:
    """Named positions of one row: ``final_delimiter``, ``demo_delimiters`` and ``query`` as token indices into the
    padded row ``ids`` (``mask``: its attention mask). Delimiter tokens that also hold answer characters are
    appended to ``merges``.

    If the processor changed the tokens after an image (Idefics2 writes a space after each image that a character
    other than a space or ``<`` follows, so ``<image>:`` becomes ``▁:``), the text is tokenized again the way the
    processor wrote it."""
    found: list[str] = []
    try:
        named = _locate(model, text, marks, ids, mask, found, space_after_images=False)
    except _UnalignedError as error:
        if not (model.image_placeholder and model.image_placeholder in text):
            raise
        try:
            found = []
            named = _locate(model, text, marks, ids, mask, found, space_after_images=True)
        except _UnalignedError:
            raise error from None
    merges.extend(found)
    return named


def _plain_tokens(tokenizer, text: str, placeholder: str | None,
                  space_after_images: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets (in ``text``) of ``text`` as the tokenizer alone writes it, or with a space
    after each image placeholder that a character other than whitespace or ``<`` follows."""
    inserted = [m.end() for m in re.finditer(re.escape(placeholder), text)
                if re.match(r"[^\s<]", text[m.end():m.end() + 1])] if space_after_images and placeholder else []
    if not inserted:
        plain = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        return plain["input_ids"], [tuple(o) for o in plain["offset_mapping"]]
    spaced, original = "", []   # original[i]: the index in `text` of spaced[i] (an inserted space: the next char)
    previous = 0
    for cut in inserted + [len(text)]:
        spaced += text[previous:cut]
        original += list(range(previous, cut))
        if cut < len(text):
            spaced += " "
            original.append(cut)
        previous = cut
    original.append(len(text))
    plain = tokenizer(spaced, return_offsets_mapping=True, add_special_tokens=True)
    offsets = [(original[a], original[b - 1] + 1) if b > a else (original[a], original[a])
               for a, b in plain["offset_mapping"]]
    return plain["input_ids"], offsets


def _locate(model, text: str, marks: dict[str, list[int]], ids, mask, merges: list,
            space_after_images: bool) -> dict[str, list[int]]:
    tokenizer = model.tokenizer
    plain_ids, offsets = _plain_tokens(tokenizer, text, model.image_placeholder, space_after_images)
    real = [int(i) for i, m in zip(ids.tolist(), mask.tolist()) if m]
    first_real = int(mask.argmax()) if mask.any() else 0  # left padding: real tokens follow the pads
    # Tokens of an image placeholder are replaced by image tokens in every family, so they take no part in the
    # alignment (a placeholder spelled in ordinary byte tokens would otherwise match letters of later words).
    placeholder = model.image_placeholder
    inside = set()
    if placeholder and placeholder in text:
        spans = [(m.start(), m.end()) for m in re.finditer(re.escape(placeholder), text)]
        inside = {i for i, (start, end) in enumerate(offsets)
                  if end > start and any(a <= start and end <= b for a, b in spans)}
    kept = [i for i in range(len(plain_ids)) if i not in inside]
    to_full = {kept[k]: v for k, v in _align([plain_ids[i] for i in kept], real).items()}

    def full_index(plain_index: int, what: str) -> int:
        mapped = to_full.get(plain_index)
        if mapped is None:
            near = _tokens_near(tokenizer, plain_ids, plain_index)
            raise _UnalignedError(f"Could not locate the {what} token after the processor expanded the prompt: "
                                  f"the processor changed the tokens around it ({near}). Use a template whose "
                                  "delimiter does not follow an image directly (e.g. 'qa' or 'qa_space').")
        return first_real + mapped

    named: dict[str, list[int]] = {}
    answers = marks.get("answer", [])
    if answers:
        plain_delimiters = [_delimiter_token(text, offsets, char, merges) for char in answers]
        delimiters = [full_index(i, "delimiter") for i in plain_delimiters]
        named["final_delimiter"] = [delimiters[-1]]
        named["demo_delimiters"] = [d for d, char in zip(delimiters, answers) if char < len(text)]
    if "query_image" in marks or ("query_start" in marks and model.image_placeholder
                                  and text[marks["query_start"][0]:marks["query_end"][0]] == model.image_placeholder):
        spans = model.adapter.spans_for_row(ids, model.hf_model.config)
        named["query"] = spans[-1].tolist() if spans else []
    elif "query_start" in marks:
        start, end = marks["query_start"][0], marks["query_end"][0]
        first_tok, last_tok = _token_at(offsets, start, "first"), _token_at(offsets, end - 1, "last")
        named["query"] = [full_index(i, "query") for i in range(first_tok, last_tok + 1)]
    return named


def _token_at(offsets: Sequence[tuple[int, int]], char: int, which: str) -> int:
    """The first or last token holding character ``char``: a character can be several tokens (sentencepiece byte
    fallback for an emoji, byte-level BPE for CJK), and a span must cover all of them."""
    holding = [i for i, (start, end) in enumerate(offsets) if start <= char < end]
    if holding:
        return holding[0] if which == "first" else holding[-1]
    # a char no token covers (e.g. stripped whitespace): the last token starting before it
    candidates = [i for i, (start, end) in enumerate(offsets) if end > start and start <= char]
    if not candidates:
        raise InputError(f"Character {char} of the prompt maps to no token.")
    return candidates[-1]


def _delimiter_token(text: str, offsets: Sequence[tuple[int, int]], answer: int, merges: list) -> int:
    """The delimiter before an answer starting at character ``answer``: the token of the character that ends the
    answer's prefix, like the one that ends the prompt (the ``:`` of ``A:``; under ``chat=True``, the last character
    of the generation prompt). Whitespace a chat template writes between that character and the answer
    (``Assistant: Paris``) is skipped, so the delimiter is the ``:``, never the answer nor a space token. A
    delimiter token that still holds answer characters (``:"``) is recorded in ``merges``."""
    final = text[-1]
    char = answer - 1
    while char > 0 and text[char].isspace() and text[char] != final:
        char -= 1
    index = _token_at(offsets, char, "last")
    if offsets[index][1] > answer:
        merges.append(text[offsets[index][0]:offsets[index][1]])
    return index


def _tokens_near(tokenizer, ids: list[int], index: int) -> str:
    return " ".join(repr(t) for t in tokenizer.convert_ids_to_tokens(ids[max(0, index - 2):index + 3]))


def _align(plain: list[int], full: list[int]) -> dict[int, int]:
    """Map indices of the plain tokenization into the processor's token sequence.

    The processor only INSERTS tokens (image expansion, wrapper tokens) and, in some families, drops one; so a
    monotone greedy walk maps each plain token to the next equal token. A plain token is left unmapped (dropped)
    when the token after it shows up first.
    """
    if plain == full:
        return {i: i for i in range(len(plain))}
    mapping: dict[int, int] = {}
    j = 0
    for i, token in enumerate(plain):
        following = plain[i + 1] if i + 1 < len(plain) else None
        k = j
        while k < len(full) and full[k] != token:
            if following is not None and following != token and full[k] == following:
                k = len(full)  # this token was dropped by the processor
                break
            k += 1
        if k < len(full):
            mapping[i] = k
            j = k + 1
    return mapping
