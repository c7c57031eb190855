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
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from ._token_marks import named_positions
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
    merges: list[str] = []
    batch.named_positions = [named_positions(model, text, marks, ids, mask, merges)
                             for (text, marks), ids, mask in zip(rendered, inputs["input_ids"],
                                                                 inputs["attention_mask"])]
    _warn_merged(model, merges)
    return batch


class DelimiterWarning(UserWarning):
    """A delimiter token that also holds the start of the answer (``:"`` for ``A:"x``): the vector is read at a
    token that differs from the query's delimiter where it is patched. ``template="qa_space"`` avoids the merge."""


_WARNED: set[tuple[str, str]] = set()


def _warn_merged(model, merges: list[str]) -> None:
    """Warn once per tokenizer and merged token."""
    name = str(getattr(model.tokenizer, "name_or_path", "") or type(model.tokenizer).__name__)
    new = sorted({m for m in merges if (name, m) not in _WARNED})
    if not new:
        return
    _WARNED.update((name, m) for m in new)
    import warnings

    warnings.warn(f"The delimiter token holds more than the delimiter: {', '.join(repr(m) for m in new)} also "
                  "hold the first character(s) of an answer, so the token read differs from the query's delimiter "
                  "where the vector is patched. template='qa_space' (`A: {y}`) avoids every such merge.",
                  DelimiterWarning, stacklevel=3)


def _render_for(model, prompt: Prompt, placeholder: str | None) -> tuple[str, dict[str, list[int]]]:
    if not prompt.chat:
        return _render(prompt, placeholder)
    return _render_chat(model, prompt, placeholder)


# Private-use characters mark where an answer or the query starts/ends inside turn contents; the template is
# rendered with them, they are located and removed, and the result must equal the rendering without them. So marks
# come from the rendering itself, never from searching the text (a label "tart" also occurs in "<|im_start|>").
_ANSWER_MARK, _QUERY_START, _QUERY_END = "\ue000", "\ue001", "\ue002"
_SENTINELS = {_ANSWER_MARK: "answer", _QUERY_START: "query_start", _QUERY_END: "query_end"}
_PROBE = "\ue003"


def _render_chat(model, prompt: Prompt, placeholder: str | None) -> tuple[str, dict[str, list[int]]]:
    """Each demo becomes a user turn (``Q:{x}\\nA:``) and an assistant turn (``{y}``); the query a final user turn
    plus the generation prompt. Content is a string, or a list of typed parts (``{"type": "text", ...}``,
    ``{"type": "image"}``) for templates that read only those (LLaVA-1.5, Idefics2)."""
    owner = _template_owner(model)
    typed = _needs_typed_parts(owner)
    turns = _chat_turns(prompt, placeholder, typed)
    marked = owner.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    plain = owner.apply_chat_template(_without_marks(turns), tokenize=False, add_generation_prompt=True)
    text, marks = _take_marks(marked)
    if text != plain:
        raise InputError("This chat template rewrites turn contents (it strips or changes them), so tv_lens cannot "
                         "tell where the answers and the query are; use chat=False, or a template that writes the "
                         "content as given.")
    if len(marks.get("answer", [])) != prompt.n_demos:
        raise InputError(f"The chat template rendered {len(marks.get('answer', []))} of the {prompt.n_demos} demo "
                         "answers; use chat=False, or a template that renders every assistant turn.")
    marks["answer"] = marks.get("answer", []) + [len(text)]   # the query's answer follows the generation prompt
    if typed and prompt.images:
        found = text.count(placeholder) if placeholder else 0
        if found != len(prompt.images):
            raise InputError(f"The chat template wrote {found} image placeholder(s) {placeholder!r} for "
                             f"{len(prompt.images)} image(s); this processor cannot place the images.")
    if prompt.query_modality == "image":
        marks.pop("query_start", None), marks.pop("query_end", None)
        marks["query_image"] = [1]   # the query is the prompt's last image (every family lays images in order)
    elif prompt.query_modality == "text" and (len(marks.get("query_start", [])) != 1
                                              or len(marks.get("query_end", [])) != 1):
        raise InputError("The chat template did not render the query's text once; use chat=False.")
    return text, marks


def _template_owner(model):
    owner = model.processor if getattr(model.processor, "chat_template", None) else model.tokenizer
    if owner is None or not getattr(owner, "chat_template", None):
        raise InputError("This model's tokenizer/processor has no chat template; use chat=False (the Q:/A: "
                         "template).")
    return owner


_TYPED_PARTS: dict[tuple[str, str], bool] = {}


def _needs_typed_parts(owner) -> bool:
    """Whether the template renders text given as typed parts only: string content that renders NO text must
    never pass silently. Probed once per template."""
    key = (type(owner).__name__, str(owner.chat_template))
    if key not in _TYPED_PARTS:
        _TYPED_PARTS[key] = _probe_typed_parts(owner)
    return _TYPED_PARTS[key]


def _probe_typed_parts(owner) -> bool:
    for typed in (False, True):
        content = [{"type": "text", "text": _PROBE}] if typed else _PROBE
        try:
            text = owner.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        except Exception:   # noqa: BLE001 - a template may raise on content it does not expect
            continue
        if _PROBE in text:
            return typed
    raise InputError("The chat template renders neither string content nor typed parts "
                     "({'type': 'text', 'text': ...}); use chat=False (the Q:/A: template).")


def _chat_turns(prompt: Prompt, placeholder: str | None, typed: bool) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    user: list = []
    piece_iter = iter(prompt.pieces)
    for piece in piece_iter:
        if isinstance(piece, (str, ImageSlot)):
            user.append(piece)
        elif piece.name in ("query_start", "query_end"):
            user.append(_QUERY_START if piece.name == "query_start" else _QUERY_END)
        elif piece.name == "answer":
            turns.append({"role": "user", "content": _content(_strip_newlines(user), placeholder, typed)})
            user = []
            answer = next(piece_iter, None)
            if isinstance(answer, str):
                label = _ANSWER_MARK + answer[len(prompt.template.label_prefix):]
                turns.append({"role": "assistant", "content": _content([label], placeholder, typed)})
                next(piece_iter, None)  # the demo separator
    return turns


def _strip_newlines(parts: list) -> list:
    """Strip newlines from both ends of a turn's visible text (marks stay where they are)."""
    parts = list(parts)
    for order in (range(len(parts)), range(len(parts) - 1, -1, -1)):
        for i in order:
            part = parts[i]
            if isinstance(part, ImageSlot):
                break
            if part in _SENTINELS:
                continue
            stripped = part.lstrip("\n") if order.step == 1 else part.rstrip("\n")
            parts[i] = stripped
            if stripped:
                break
    return [p for p in parts if not (isinstance(p, str) and not p)]


def _content(parts: list, placeholder: str | None, typed: bool) -> str | list[dict[str, str]]:
    if not typed:
        return "".join(p if isinstance(p, str) else (placeholder or "") for p in parts)
    content: list[dict[str, str]] = []
    for part in parts:
        if isinstance(part, ImageSlot):
            content.append({"type": "image"})
        elif content and content[-1]["type"] == "text":
            content[-1]["text"] += part
        else:
            content.append({"type": "text", "text": part})
    return content


def _without_marks(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def clean(value: str) -> str:
        return "".join(c for c in value if c not in _SENTINELS)

    out = []
    for turn in turns:
        content = turn["content"]
        if isinstance(content, str):
            content = clean(content)
        else:
            content = [{**part, "text": clean(part["text"])} if "text" in part else part for part in content]
        out.append({**turn, "content": content})
    return out


def _take_marks(marked: str) -> tuple[str, dict[str, list[int]]]:
    text, marks = [], {}
    for char in marked:
        if char in _SENTINELS:
            marks.setdefault(_SENTINELS[char], []).append(len(text))
        else:
            text.append(char)
    return "".join(text), marks


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
    "DelimiterWarning",
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
