"""What every named position must decode to, on any tokenizer (used by tests/test_real_tokenizers.py and by
tests/position_matrix.py): a check that knows nothing of how tv_lens finds positions, only what the docs promise.

- ``delimiter`` (the query's) is the last real token; ``delimiter[k]`` holds the ``:`` that ends the k-th demo's
  ``A:`` (under ``chat=True``: the same token as the query's delimiter, the last token of the generation prompt),
  and the k-th demo's answer starts right after it — unless a :class:`DelimiterWarning` said the delimiter token
  also holds the answer's first characters.
- ``query`` holds every token of the query's text (and no more than the tokens of that text alone plus the two
  neighbours its ends may merge with), or exactly the query image's tokens.
- an instruction's delimiter is its last token.
"""

from __future__ import annotations

import re
import warnings

import torch

from tv_lens import prompts as P
from tv_lens.positions import resolve
from tv_lens.testing import random_image

NAMES = ("llava", "llava_next", "idefics2", "smolvlm", "mistral", "smollm2")
IMAGE_MODELS = ("llava", "llava_next", "idefics2", "smolvlm")
#: what generated inputs and labels are made of: letters, digits, spaces, quotes, ':' and 'A:', emoji, CJK
SYMBOLS = list("abcXYZ019 :\"'-./é") + ["🦩", "🙂", "北京", "A:", "Q:", "::", "://"]
KINDS = ("icl", "query", "instructed", "instruction", "xbase", "image_icl", "image_query")


def kinds_of(name: str) -> tuple[str, ...]:
    """The prompt kinds a model takes (image kinds for the image models only)."""
    return KINDS if name in IMAGE_MODELS else KINDS[:4]


def items_for(tiny, pairs):
    """Items ``{"input", "output"}`` (with a random image for image models) from ``(x, y)`` pairs."""
    if tiny.image_size is None:
        return [{"input": x, "output": y} for x, y in pairs]
    return [{"input": x, "output": y, "image": random_image(*tiny.image_size, seed=i)}
            for i, (x, y) in enumerate(pairs)]


def build_prompt(tiny, kind: str, template: str, chat: bool, xs: list[str], ys: list[str]) -> P.Prompt:
    """One prompt of ``kind`` from generated inputs ``xs`` and labels ``ys`` (3 of each)."""
    items = items_for(tiny, list(zip(xs, ys)))
    if kind == "instruction":
        return P.instruction(xs[0])
    if kind == "query":
        return P.query(items[0], template=template, chat=chat)
    if kind == "image_query":
        return P.query(items[0], modality="image", template=template, chat=chat)
    if kind == "instructed":
        return P.instructed_query(items[0], ys[0], template=template, chat=chat)
    demo_modality = "image" if kind == "image_icl" else "text"
    query_modality = "text" if kind == "icl" else "image"
    return P.icl_prompt(items[:2], items[2], demo_modality=demo_modality, query_modality=query_modality,
                        chat=chat, template=template)


def nows(text: str) -> str:
    """Text without whitespace (and without sentencepiece's ``▁``), to compare decodings across tokenizers."""
    return re.sub(r"[\s▁]", "", text)


def encode_checked(model, prompt: P.Prompt) -> str:
    """Encode one prompt and check every named position; returns ``"ok"`` or ``"merged"`` (a DelimiterWarning
    was raised and the merged demo delimiters were let pass). Typed errors propagate to the caller."""
    P._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = P.encode(model, [prompt])
    merged = any(issubclass(w.category, P.DelimiterWarning) for w in caught)
    if merged:
        assert any("qa_space" in str(w.message) for w in caught), "the merge warning must name qa_space"
    pos = model.positions(batch)
    ids = batch["input_ids"][0]
    tokenizer = model.tokenizer

    def decode(idx) -> str:
        return tokenizer.decode(ids[idx].reshape(-1).tolist(), skip_special_tokens=False)

    last = int(pos.last[0])
    final = int(resolve("delimiter", pos)[0])
    assert final == last, f"the query's delimiter {final} is not the last token {last}"
    if prompt.kind == "instruction":
        text = prompt.render(None)
        assert nows(decode(slice(0, final + 1))).endswith(nows(text)), "instruction delimiter is not its last token"
        return "merged" if merged else "ok"
    if not prompt.chat:
        assert nows(decode(final)).endswith(":"), f"query delimiter decodes to {decode(final)!r}"
    for k, label in enumerate(prompt.demo_labels):
        d = int(resolve(f"delimiter[{k}]", pos)[0])
        if prompt.chat:
            ok = int(ids[d]) == int(ids[final])
        else:
            ok = nows(decode(d)).endswith(":")
        after = nows(decode(slice(d + 1, last + 1)))
        ok = ok and after.startswith(nows(label))
        assert ok or merged, (f"delimiter[{k}] decodes to {decode(d)!r} followed by {after[:20]!r}; "
                              f"label {label!r}")
    if prompt.query_modality == "image":
        query = resolve("query", pos)[0]
        image_id = model.cfg.image_token_id
        assert bool((ids[query] == image_id).all()), "query of an image query is not image tokens"
        assert torch.equal(query.cpu(), pos.images[0][-1].cpu())
    elif prompt.query_input is not None:
        span = resolve("query", pos)[0].tolist()
        want = nows(prompt.query_input)
        assert want in nows(decode(span)), f"query {decode(span)!r} misses part of {prompt.query_input!r}"
        assert int(resolve("query[-1]", pos)[0]) == span[-1]
        alone = len(tokenizer(prompt.query_input, add_special_tokens=False)["input_ids"])
        assert len(span) <= alone + 2, f"query span {decode(span)!r} holds more than its text and two neighbours"
    return "merged" if merged else "ok"
