"""Prompts: text ICL, image ICL, mixed (xBase), instructions and bare queries, in the Q:/A: template or a chat template.

A :class:`Prompt` is model-agnostic: images are slots that :func:`encode` renders with the model's own placeholder.
Named positions come from character offsets in the rendered text, mapped to token indices after tokenization and
image expansion, so data containing ``:`` or newlines can never shift them:

- ``"query_delimiter"`` (alias ``"delimiter"``): the token that ends the query's ``A:``, i.e. the last token before
  the answer — where patches act;
- ``"delimiter[k]"``: the k-th demo's delimiter; ``"delimiter[-1]"``, the LAST DEMO's, is where task vectors are
  read (the paper's released code, ``src_match=-3``);
- ``"query"``: every token of the query input (text tokens or image tokens), ``"query[-1]"`` its last token.

Template (Todd et al., the default): demos ``Q:{x}\\nA:{y}\\n\\n``, query ``Q:{x}\\nA:``. Other layouts are a
:class:`Template` (or one of the names in :data:`TEMPLATES`) passed as ``template=``. For BPE tokenizers such as
SmolLM2's, ``"qa_space"`` (``A: {y}``) matches how the model saw answers in training: words after a space are
single tokens there (`` Paris``), while ``A:Paris`` splits them into rarer pieces.
"""

from __future__ import annotations

import random
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from .errors import InputError, TaskError
from .positions import resolve as resolve_position

QUESTION, ANSWER, SEPARATOR = "Q:", "\nA:", "\n\n"
MODALITIES = ("text", "image")


@dataclass(frozen=True)
class Template:
    """How a demo and a query are written: ``{question}{x}{answer}{label_prefix}{y}{separator}`` per demo, then
    ``{question}{x}{answer}`` for the query.

    The delimiter position is the last token of ``answer`` (the ``:`` of ``A:``), so ``answer`` must not end in
    whitespace; put a space before the label with ``label_prefix=" "`` instead, which keeps the query ending in
    ``:`` and lets the model produce the space-led word token itself.
    """

    question: str = QUESTION
    answer: str = ANSWER
    separator: str = SEPARATOR
    label_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.answer or not self.answer.strip():
            raise InputError("Template.answer must contain visible text (the delimiter, e.g. '\\nA:').")
        if self.answer != self.answer.rstrip():
            raise InputError(f"Template.answer {self.answer!r} ends in whitespace; the delimiter would then be a "
                             "space token. Use label_prefix=' ' for a space before the answer.")
        if self.label_prefix.strip():
            raise InputError(f"Template.label_prefix {self.label_prefix!r} may only hold whitespace.")


#: Named templates: ``"qa"`` (the default, ``Q:{x}\\nA:{y}``), ``"qa_space"`` (``Q: {x}\\nA: {y}``) and
#: ``"colon"`` (``{x}: {y}``, one demo per line).
TEMPLATES: dict[str, Template] = {
    "qa": Template(),
    "qa_space": Template(question="Q: ", label_prefix=" "),
    "colon": Template(question="", answer=":", separator="\n", label_prefix=" "),
}
DEFAULT_TEMPLATE = TEMPLATES["qa"]


def get_template(template: Template | str | None) -> Template:
    """A :class:`Template` from itself, a name in :data:`TEMPLATES`, or ``None`` (the default ``"qa"``)."""
    if template is None:
        return DEFAULT_TEMPLATE
    if isinstance(template, Template):
        return template
    if isinstance(template, str) and template in TEMPLATES:
        return TEMPLATES[template]
    raise InputError(f"Unknown template {template!r}; use a Template or one of {sorted(TEMPLATES)}.")


@dataclass(frozen=True)
class ImageSlot:
    """Where an image goes; ``image`` is a PIL image or a path."""

    image: Any


@dataclass(frozen=True)
class _Mark:
    name: str


@dataclass(frozen=True)
class Prompt:
    """One prompt: text pieces, image slots and position marks, plus what it is for.

    Attributes:
        pieces: strings, :class:`ImageSlot` s and internal marks, in order.
        label: the expected answer of the query (``None`` for a source-only prompt).
        demo_labels: the answers of the in-context demos (for the majority baseline).
        kind: ``"icl"``, ``"query"`` (no context) or ``"instruction"``.
        demo_modality / query_modality: ``"text"``, ``"image"`` or ``None``.
        query_input: the query's text form (``"France"``), also for image queries.
        chat: rendered with the model's chat template.
        template: the :class:`Template` the pieces were written in.
    """

    pieces: tuple
    label: str | None = None
    demo_labels: tuple[str, ...] = ()
    kind: str = "icl"
    demo_modality: str | None = None
    query_modality: str | None = None
    query_input: str | None = None
    chat: bool = False
    template: Template = DEFAULT_TEMPLATE

    @property
    def n_demos(self) -> int:
        return len(self.demo_labels)

    @property
    def images(self) -> list:
        return [p.image for p in self.pieces if isinstance(p, ImageSlot)]

    def render(self, placeholder: str | None = "<image>") -> str:
        """The prompt text with ``placeholder`` at each image."""
        return _render(self, placeholder)[0]

    def __repr__(self) -> str:
        text = self.render("<image>")
        short = text if len(text) < 70 else text[:30] + " … " + text[-30:]
        return (f"Prompt({self.kind}, demos={self.n_demos} {self.demo_modality or ''}, "
                f"query={self.query_modality}, label={self.label!r}, text={short!r})")


def _render(prompt: Prompt, placeholder: str | None) -> tuple[str, dict[str, list[int]]]:
    text, marks = "", {}
    for piece in prompt.pieces:
        if isinstance(piece, str):
            text += piece
        elif isinstance(piece, ImageSlot):
            if placeholder is None:
                raise InputError("This prompt has an image but the model is text-only (no image placeholder).")
            text += placeholder
        else:
            marks.setdefault(piece.name, []).append(len(text))
    return text, marks


def _item_field(item: Any, name: str) -> Any:
    return item[name] if isinstance(item, dict) else getattr(item, name, None)


def _image_of(item: Any) -> Any:
    opener = getattr(item, "open_image", None)
    if callable(opener):
        return opener()
    image = _item_field(item, "image")
    if image is None:
        raise TaskError(f"Item {_item_field(item, 'input')!r} has no image; use task.with_images() for image "
                        "prompts.")
    return image


def _input_pieces(item: Any, modality: str) -> list:
    if modality == "text":
        value = _item_field(item, "input")
        if not value:
            raise TaskError(f"Item {item!r} has no text input.")
        return [str(value)]
    if modality == "image":
        return [ImageSlot(_image_of(item))]
    raise InputError(f"Unknown modality {modality!r}; use one of {MODALITIES}.")


def _check_label(item: Any) -> str:
    label = _item_field(item, "output")
    if label is None or not str(label).strip():
        raise TaskError(f"Item {_item_field(item, 'input')!r} has an empty label.")
    return str(label)


def query(item: Any, modality: str = "text", template: Template | str | None = None, chat: bool = False) -> Prompt:
    """A contextless query ``Q:{x}\\nA:`` (no demos): the target of a patch, and the no-context baseline.
    ``chat=True`` renders it as one user turn of the model's chat template (paper Table 6)."""
    return icl_prompt([], item, demo_modality=None, query_modality=modality, template=template, chat=chat)


def icl_prompt(demos: Sequence[Any], item: Any | None, demo_modality: str | None = "text",
               query_modality: str | None = "text", chat: bool = False,
               template: Template | str | None = None) -> Prompt:
    """One ICL prompt from explicit demos and a query item (``item=None``: demos only), written in ``template``
    (a :class:`Template` or a name in :data:`TEMPLATES`; default ``"qa"``)."""
    t = get_template(template)
    pieces: list = []
    labels = []
    for demo in demos:
        label = _check_label(demo)
        pieces += [t.question, *_input_pieces(demo, demo_modality), t.answer, _Mark("answer"),
                   t.label_prefix + label, t.separator]
        labels.append(label)
    label = query_input = None
    if item is not None:
        label = _check_label(item)
        query_input = str(_item_field(item, "input") or "")
        pieces += [t.question, _Mark("query_start"), *_input_pieces(item, query_modality), _Mark("query_end"),
                   t.answer, _Mark("answer")]
    pieces = [p for p in pieces if not (isinstance(p, str) and not p)]
    return Prompt(tuple(pieces), label=label, demo_labels=tuple(labels), kind="icl" if demos else "query",
                  demo_modality=demo_modality if demos else None,
                  query_modality=query_modality if item is not None else None, query_input=query_input, chat=chat,
                  template=t)


def instructed_query(item: Any, instruction_text: str, modality: str = "text",
                     template: Template | str | None = None, chat: bool = False) -> Prompt:
    """A query with an instruction in context: ``{instruction}\\nQ:{x}\\nA:`` (the paper's "Instruction xBase",
    Figure 9). Its delimiter is the query's, as in a bare query."""
    if not instruction_text or not instruction_text.strip():
        raise TaskError("The instruction is empty.")
    bare = query(item, modality, template=template, chat=chat)
    return replace(bare, pieces=(instruction_text.rstrip("\n") + "\n", *bare.pieces), kind="instructed")


def instruction(text: str) -> Prompt:
    """A bare instruction (``"The capital city of the country:"``); its vector is read at the last token."""
    if not text or not text.strip():
        raise TaskError("The instruction is empty.")
    return Prompt((text, _Mark("answer")), kind="instruction")


def sample_demos(pool: Sequence[Any], n_shots: int, exclude: Any, rng: random.Random) -> list:
    """``n_shots`` demos from ``pool``, never the query itself (compared by input)."""
    excluded = _item_field(exclude, "input") if exclude is not None else None
    candidates = [it for it in pool if _item_field(it, "input") != excluded]
    if len(candidates) < n_shots:
        raise TaskError(f"{n_shots} shots need at least {n_shots} items besides the query; the pool has "
                        f"{len(candidates)}.")
    return rng.sample(candidates, n_shots)


def icl(queries: Any, n_shots: int = 5, modality: str = "text", query_modality: str | None = None,
        pool: Sequence[Any] | None = None, seed: int = 0, chat: bool = False,
        include_query: bool = True, template: Template | str | None = None) -> list[Prompt]:
    """One ICL prompt per query item, with seeded demos.

    Args:
        queries: items (``TaskItem`` s, dicts with input/output/image) or a ``Task`` (its ``val`` split is used).
        n_shots: demos per prompt (paper: 5).
        modality: of the demos, ``"text"`` or ``"image"``.
        query_modality: of the query; defaults to ``modality``. Text demos + image query = xBase.
        pool: where demos come from; default: the queries themselves (never a prompt's own query).
        seed: demo sampling seed; the same seed gives the same prompts, and an item's demos depend only on the
            seed and that item (so splitting the items into shards changes nothing).
        include_query: ``False`` builds source prompts of demos only.
        template: a :class:`Template` or a name in :data:`TEMPLATES` (default ``"qa"``: ``Q:{x}\\nA:{y}``).

    Raises:
        TaskError: empty queries, too few items for ``n_shots``, an empty label.
    """
    items = list(getattr(queries, "val", queries))
    if not items:
        raise TaskError("No items to build prompts from (empty task or split).")
    pool = list(pool) if pool is not None else items
    query_modality = query_modality or modality
    prompts = []
    for item in items:
        # Each item's demos depend only on (seed, item), so a subset or a shard of items gets the same prompts.
        rng = random.Random(f"{seed}:{_item_field(item, 'input')}")
        demos = sample_demos(pool, n_shots, item, rng)
        prompts.append(icl_prompt(demos, item if include_query else None, modality, query_modality, chat=chat,
                                  template=template))
    return prompts


def queries(items: Any, modality: str = "text", template: Template | str | None = None,
            chat: bool = False) -> list[Prompt]:
    """Contextless queries for every item (``Task`` → its ``test`` split); ``chat=True``: chat-template turns."""
    items = list(getattr(items, "test", items))
    if not items:
        raise TaskError("No items to build queries from (empty task or split).")
    return [query(item, modality, template=template, chat=chat) for item in items]


# ---------------------------------------------------------------------------------------------- encoding
class PromptBatch(dict):
    """Model inputs (a dict of tensors) that also know their prompts and named positions per row.

    Ask it for a position with the specs used everywhere (``at=``, ``positions=``, inside hooks
    :func:`tv_lens.hooks.position`): ``batch.position("delimiter[-1]")`` → ``LongTensor[batch]``.
    ``named_positions`` is the raw per-row record under its storage keys (``final_delimiter`` = ``"delimiter"``,
    ``demo_delimiters[k]`` = ``"delimiter[k]"``, ``query`` = ``"query"``); :meth:`position_names` gives the specs.
    """

    prompts: list[Prompt]
    named_positions: list[dict[str, list[int]]]

    def position(self, spec: Any) -> Tensor:
        """Token indices of ``spec`` in each row, in padded coordinates: ``LongTensor[batch]`` or ``[batch, k]``.

        Specs: ``"delimiter"``, ``"delimiter[k]"``, ``"query"``, ``"query[k]"``, ``"image[j]"``, ``"last"``, ints,
        lists, per-row tensors (see :mod:`tv_lens.positions`). Raises ``PositionError`` when it does not occur.
        """
        return resolve_position(spec, self._model_of().positions(self))

    def _model_of(self) -> Any:
        ref = getattr(self, "_model", None)
        model = ref() if ref is not None else None
        if model is None:
            raise InputError("This PromptBatch was not made by tv_lens.prompts.encode(model, prompts) (or its model "
                             "is gone); encode the prompts to resolve positions.")
        return model

    def position_names(self, row: int = 0) -> dict[str, Any]:
        """The named positions of one row under the specs' names: ``{"delimiter": 17, "delimiter[0]": 5, ...,
        "query": [12, 13], "last": 17}`` (image spans: ``"image[j]"``)."""
        named = self.named_positions[row]
        out: dict[str, Any] = {}
        if "final_delimiter" in named:
            out["delimiter"] = named["final_delimiter"][0]
        for k, index in enumerate(named.get("demo_delimiters", [])):
            out[f"delimiter[{k}]"] = index
        if "query" in named:
            out["query"] = list(named["query"])
        positions = self._model_of().positions(self)
        out["last"] = int(positions.last[row])
        for j, span in enumerate(positions.images[row]):
            out[f"image[{j}]"] = span.tolist()
        return out


def encode(model, prompts: Prompt | Sequence[Prompt]) -> PromptBatch:
    """Render, tokenize (left-padded) and locate named positions for a batch of prompts.

    Returns:
        A :class:`PromptBatch`: ``input_ids [batch, pos]``, ``attention_mask``, pixel inputs, plus per-row
        ``named_positions`` (``demo_delimiters``, ``final_delimiter``, ``query``).
    """
    prompts = [prompts] if isinstance(prompts, Prompt) else list(prompts)
    if not prompts:
        raise InputError("No prompts to encode.")
    placeholder = model.image_placeholder
    rendered = [_render_for(model, p, placeholder) for p in prompts]
    texts = [r[0] for r in rendered]
    images = [p.images for p in prompts]
    inputs = model.prepare(texts, images=images if any(images) else None)
    batch = PromptBatch(inputs)
    batch.prompts = prompts
    batch._model = weakref.ref(model)   # positions need the model; a weak reference keeps copies of the batch light
    batch.named_positions = [_named_positions(model, text, marks, ids, mask)
                             for (text, marks), ids, mask in zip(rendered, inputs["input_ids"],
                                                                 inputs["attention_mask"])]
    return batch


def _render_for(model, prompt: Prompt, placeholder: str | None) -> tuple[str, dict[str, list[int]]]:
    if not prompt.chat:
        return _render(prompt, placeholder)
    return _render_chat(model, prompt, placeholder)


def _render_chat(model, prompt: Prompt, placeholder: str | None) -> tuple[str, dict[str, list[int]]]:
    """Each demo becomes a user turn (``Q:{x}\\nA:``) and an assistant turn (``{y}``); the query a final user turn
    plus the generation prompt. Marks are found again in the rendered text."""
    tokenizer = model.tokenizer
    template_owner = model.processor if getattr(model.processor, "chat_template", None) else tokenizer
    if template_owner is None or not getattr(template_owner, "chat_template", None):
        raise InputError("This model's tokenizer/processor has no chat template; use chat=False (the Q:/A: "
                         "template).")
    turns: list[dict[str, str]] = []
    user = ""
    piece_iter = iter(prompt.pieces)
    for piece in piece_iter:
        if isinstance(piece, str):
            user += piece
        elif isinstance(piece, ImageSlot):
            user += placeholder or ""
        elif piece.name == "answer":
            turns.append({"role": "user", "content": user.strip("\n")})
            user = ""
            answer = next(piece_iter, None)
            if isinstance(answer, str):
                turns.append({"role": "assistant", "content": answer[len(prompt.template.label_prefix):]})
                next(piece_iter, None)  # the demo separator
    text = template_owner.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    marks: dict[str, list[int]] = {"answer": []}
    cursor = 0
    for turn in turns:
        start = text.index(turn["content"], cursor)
        if turn["role"] == "assistant":
            marks["answer"].append(start)
        cursor = start + len(turn["content"])
    marks["answer"].append(len(text))
    if prompt.query_input is not None and prompt.query_modality == "text":
        start = text.rindex(prompt.query_input)
        marks["query_start"], marks["query_end"] = [start], [start + len(prompt.query_input)]
    elif prompt.query_modality == "image" and placeholder:
        start = text.rindex(placeholder)
        marks["query_start"], marks["query_end"] = [start], [start + len(placeholder)]
    return text, marks


def _named_positions(model, text: str, marks: dict[str, list[int]], ids, mask) -> dict[str, list[int]]:
    tokenizer = model.tokenizer
    plain = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    plain_ids, offsets = plain["input_ids"], plain["offset_mapping"]
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

    def token_at(char: int) -> int:
        for index, (start, end) in enumerate(offsets):
            if start <= char < end:
                return index
        # a char no token covers (e.g. stripped whitespace): the last token starting before it
        candidates = [i for i, (start, end) in enumerate(offsets) if end > start and start <= char]
        if not candidates:
            raise InputError(f"Character {char} of the prompt maps to no token.")
        return candidates[-1]

    def full_index(plain_index: int, what: str) -> int:
        mapped = to_full.get(plain_index)
        if mapped is None:
            raise InputError(f"Could not locate the {what} token after the processor expanded the prompt; "
                             "the processor changed the text around it.")
        return first_real + mapped

    named: dict[str, list[int]] = {}
    answers = marks.get("answer", [])
    if answers:
        # The delimiter is the token holding the last character before the answer (the ':' of "A:").
        delimiters = [full_index(token_at(char - 1), "delimiter") for char in answers]
        named["final_delimiter"] = [delimiters[-1]]
        named["demo_delimiters"] = [d for d, char in zip(delimiters, answers) if char < len(text)]
    if "query_start" in marks:
        start, end = marks["query_start"][0], marks["query_end"][0]
        if model.image_placeholder and text[start:end] == model.image_placeholder:
            spans = model.adapter.spans_for_row(ids, model.hf_model.config)
            named["query"] = spans[-1].tolist() if spans else []
        else:
            first_tok, last_tok = token_at(start), token_at(end - 1)
            named["query"] = [full_index(i, "query") for i in range(first_tok, last_tok + 1)]
    return named


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


def shuffle_labels(prompts: Prompt | Sequence[Prompt], seed: int = 0) -> list[Prompt]:
    """Copies of ICL prompts whose demo labels are permuted among their demos (Todd et al.'s corrupted prompts):
    the demos no longer show the input→output mapping, the query and its label stay.

    Each prompt gets its own seeded permutation; when its demo labels are all distinct, no demo keeps its own.

    Raises:
        TaskError: a prompt with fewer than two demos (nothing to shuffle).
    """
    prompts = [prompts] if isinstance(prompts, Prompt) else list(prompts)
    rng = random.Random(seed)
    out = []
    for prompt in prompts:
        slots = [i for i in range(1, len(prompt.pieces) - 1) if isinstance(prompt.pieces[i - 1], _Mark)
                 and prompt.pieces[i - 1].name == "answer" and isinstance(prompt.pieces[i], str)]
        if len(slots) < 2:
            raise TaskError(f"Shuffling labels needs at least two demos; {prompt!r} has {len(slots)}.")
        labels = [prompt.pieces[i] for i in slots]
        order = list(range(len(labels)))
        for _ in range(100):
            rng.shuffle(order)
            if len(set(labels)) < len(labels) or all(j != k for k, j in enumerate(order)):
                break
        shuffled = [labels[j] for j in order]
        pieces = list(prompt.pieces)
        for i, label in zip(slots, shuffled):
            pieces[i] = label
        prefix = len(prompt.template.label_prefix)
        out.append(replace(prompt, pieces=tuple(pieces), demo_labels=tuple(x[prefix:] for x in shuffled)))
    return out


__all__ = [
    "DEFAULT_TEMPLATE",
    "TEMPLATES",
    "Template",
    "get_template",
    "ImageSlot",
    "Prompt",
    "PromptBatch",
    "encode",
    "icl",
    "icl_prompt",
    "instruction",
    "instructed_query",
    "queries",
    "query",
    "sample_demos",
    "shuffle_labels",
]
