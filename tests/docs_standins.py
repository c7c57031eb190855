"""Offline stand-ins for the hub models the docs load, so the doc tests run the pages' own text.

The doc-test harness (``tests/docs_harness.py``) calls :func:`install` in each page's kernel before the first block.
From then on ``HookedMultimodalModel.from_pretrained(hub_id, ...)`` of an id in :data:`STANDINS` loads the stand-in
named there instead and prints one line saying so; any other id or folder goes to the real ``from_pretrained``.
Placement and precision arguments (``dtype``, ``device``, ``device_map``, ``quantization_config``) are dropped: the
stand-ins run in float32 on the CPU. ``attn_implementation`` is honoured.

A stand-in is a model of the same kind: a VLM for a VLM (the reference VLM, itself a LLaVA-style model), a causal LM
for a causal LM (the real SmolLM2-135M — which is also the reference VLM's language model, so LLM -> VLM transfer
runs as it does between Mistral and Idefics2), or the tiny random model of the family when only the code path matters.
"""

from __future__ import annotations

from typing import Any

# hub id -> stand-in: "reference-vlm", "smollm2" or "tiny:<family>" (tv_lens.testing.TINY_FAMILIES)
STANDINS: dict[str, str] = {
    "HuggingFaceM4/idefics2-8b": "reference-vlm",
    "llava-hf/llava-1.5-7b-hf": "reference-vlm",
    "TIGER-Lab/Mantis-8B-Fuyu": "tiny:fuyu",
    "mistralai/Mistral-7B-v0.1": "smollm2",
    "lmsys/vicuna-7b-v1.5": "smollm2",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2",
}

DESCRIPTIONS = {
    "reference-vlm": "the reference VLM (tv_lens.reference.load_reference_vlm)",
    "smollm2": "SmolLM2-135M-Instruct (tv_lens.offline.load_smollm2)",
}

DROPPED = ("dtype", "device", "device_map", "quantization_config", "torch_dtype", "low_cpu_mem_usage")

_original = None


def load_standin(kind: str):
    """Build the hooked stand-in ``kind`` (a value of :data:`STANDINS`)."""
    import tv_lens as tvl

    if kind == "reference-vlm":
        from tv_lens.reference import load_reference_vlm

        model, processor = load_reference_vlm()
        return tvl.HookedMultimodalModel.from_hf(model, processor=processor)
    if kind == "smollm2":
        from tv_lens.offline import load_smollm2

        model, tokenizer = load_smollm2()
        return tvl.HookedMultimodalModel.from_hf(model, tokenizer=tokenizer)
    if kind.startswith("tiny:"):
        from tv_lens.testing import tiny_model

        return tiny_model(kind.split(":", 1)[1]).hooked()
    raise ValueError(f"unknown stand-in {kind!r}: use 'reference-vlm', 'smollm2' or 'tiny:<family>'")


def install() -> None:
    """Route ``HookedMultimodalModel.from_pretrained`` of the ids in :data:`STANDINS` to their stand-ins."""
    global _original
    import tv_lens as tvl

    cls = tvl.HookedMultimodalModel
    if _original is None:
        _original = cls.__dict__["from_pretrained"]

    def from_pretrained(klass, name_or_path, *args: Any, **kwargs: Any):
        kind = STANDINS.get(str(name_or_path))
        if kind is None:
            return _original.__get__(None, klass)(name_or_path, *args, **kwargs)
        dropped = {k: kwargs.pop(k) for k in DROPPED if k in kwargs}
        attn = kwargs.pop("attn_implementation", None)
        if kwargs or args:
            raise TypeError(f"docs stand-in for {name_or_path}: unexpected arguments {args} {sorted(kwargs)}")
        model = load_standin(kind)
        if attn is not None:
            model.hf_model.set_attn_implementation(attn)
        note = f" ({', '.join(f'{k}={v!r}' for k, v in dropped.items())} dropped)" if dropped else ""
        print(f"[doc tests] {name_or_path} -> stand-in: {DESCRIPTIONS.get(kind, kind)}{note}")
        return model

    cls.from_pretrained = classmethod(from_pretrained)


def uninstall() -> None:
    """Undo :func:`install`."""
    global _original
    import tv_lens as tvl

    if _original is not None:
        tvl.HookedMultimodalModel.from_pretrained = _original
        _original = None
