"""Models and tasks by name, checked before anything heavy loads: what a run starts from.

A model is a hub id, a folder written by ``save_pretrained``, ``smollm2`` (the offline real SmolLM2-135M) or
``reference`` (the offline reference VLM); a task is a shipped name, ``all``, or a ``.json`` / ``.csv`` file or folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import tasks as T
from ..errors import InputError, TaskError, UsageError
from ..model import HookedMultimodalModel, _parse_dtype

SMOLLM2_NAMES = ("smollm2", "smollm2-135m-instruct")
REFERENCE_NAMES = ("reference", "reference-vlm")


def one_line(err: Any) -> str:
    """An error message (or any text) on one line: what the command line prints."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


def load_model(name: str, dtype: str | None = None, device: str | None = None, device_map: str | None = None,
               load_in_4bit: bool = False, trust_remote_code: bool = False) -> HookedMultimodalModel:
    """A ``HookedMultimodalModel`` from a hub id, a local folder, ``smollm2`` or ``reference`` (the offline VLM).

    Raises:
        InputError: a folder without a readable config.json, a model that cannot load; FileNotFoundError: a local
            path that does not exist; UsageError: a folder with its own code and no ``trust_remote_code``.
    """
    if name.lower() in SMOLLM2_NAMES:
        from ..offline import load_smollm2

        parsed = _parse_dtype(dtype) if dtype else None
        hf_model, tokenizer = load_smollm2(dtype=parsed) if parsed is not None else load_smollm2()
        return HookedMultimodalModel.from_hf(hf_model.to(device) if device else hf_model, tokenizer=tokenizer)
    if name.lower() in REFERENCE_NAMES:
        from ..reference import ReferenceWeightsError, load_reference_vlm

        try:
            hf_model, processor = load_reference_vlm(dtype=_parse_dtype(dtype) or torch.float32, device=device)
        except ReferenceWeightsError as err:
            raise InputError(f"the reference VLM cannot load: {one_line(err)}") from err
        return HookedMultimodalModel.from_hf(hf_model, processor=processor, model_name="reference-vlm")
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if not path.exists() and looks_local:
        raise FileNotFoundError(f"no model folder at {name}")
    check_model_folder(name, trust_remote_code)
    quantization = None
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=_parse_dtype(dtype) or torch.bfloat16)
    try:
        return HookedMultimodalModel.from_pretrained(
            str(path) if path.exists() else name, dtype=dtype, device=device, device_map=device_map,
            quantization_config=quantization, trust_remote_code=trust_remote_code)
    except OSError as err:  # transformers: not a folder and not reachable on the hub
        raise InputError(f"could not load model {name!r}: {one_line(err)}") from err


def check_model_folder(name: str, trust_remote_code: bool) -> None:
    """Before loading: a local folder must hold a readable config.json, and code from it needs the user's consent."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(f"{name} has no config.json: give a folder written by save_pretrained, a hub id, "
                         "or 'smollm2'")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise InputError(f"{config_file} is not valid JSON ({one_line(err)})") from None
    if not isinstance(config, dict):
        raise InputError(f"{config_file} is not a JSON object")
    if config.get("auto_map") and not trust_remote_code:
        raise UsageError(f"{name} needs its own Python code (config.json has auto_map); read it, then pass "
                         "--trust-remote-code to run it")


def check_device(device: str | None) -> None:
    """``device``: a torch device that exists on this machine (``None``: wherever the model loads)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--device {device!r} is not a device ({one_line(err)}); use cpu, cuda, cuda:1 or mps"
                         ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "xpu", "meta") or dev.type == "meta":
        raise UsageError(f"--device {device}: use cpu, cuda, cuda:N or mps")


def load_tasks(specs: Sequence[str], n_val: int, n_test: int, images: bool = False) -> list[T.Task]:
    """Tasks by name, ``all``, or path; with ``images``, only the items whose image file exists.

    Raises:
        TaskError: an unknown task, splits too large for a task, two tasks of the same name.
    """
    names = [name for spec in specs for name in (T.list_tasks() if spec == "all" else [spec])]
    try:
        loaded = [T.load(name, n_val=n_val, n_test=n_test) for name in dict.fromkeys(names)]
    except TaskError as err:
        if "n_val" not in str(err):
            raise
        raise TaskError(f"{one_line(err)} (on the command line: --n-val / --n-test)") from err
    taken = [t.name for t in loaded]
    if len(set(taken)) != len(taken):
        raise TaskError(f"two tasks are named the same ({taken}); rename one (the name is the task's key)")
    return [t.with_images(existing=True) for t in loaded] if images else loaded


def check_modalities(model: HookedMultimodalModel, *modalities: str) -> None:
    """Image prompts need a VLM: raise :class:`InputError` for a text-only model asked for ``"image"``."""
    if "image" in modalities and model.image_placeholder is None:
        raise InputError(f"{model.cfg.model_name} is a text-only model: image prompts need a VLM "
                         "(use --modality text --query-modality text)")


__all__ = ["REFERENCE_NAMES", "SMOLLM2_NAMES", "check_device", "check_model_folder", "check_modalities",
           "load_model", "load_tasks", "one_line"]
