r"""Chat templates of the reference and LLaVA-style tokenization around the image placeholder.

The rendered strings are exactly those of spec §2.6 (``model_rsvqa.py``): the question becomes
``"<image>\n" + question + "\n"`` inside the template. Tokenization follows LLaVA's
``tokenizer_image_token``: the text is split at the placeholder, each chunk is tokenized on its own
and only the first BOS is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from lrs_core.errors import ConfigError

#: The image placeholder in rendered prompts.
IMAGE_PLACEHOLDER = "<image>"
#: LLaVA's placeholder id in token-id lists (never a real vocabulary id).
IMAGE_TOKEN_ID = -200

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHATML_SYSTEM = "You are a helpful assistant."

_TEMPLATES: dict[str, str] = {
    # conv_vicuna_v1, SeparatorStyle.TWO (sep " ", roles USER/ASSISTANT).
    "vicuna_v1": VICUNA_V1_SYSTEM + " USER: {message} ASSISTANT:",
    # conv_qwen (qwen_1_5), SeparatorStyle.CHATML.
    "chatml": (
        "<|im_start|>system\n" + CHATML_SYSTEM + "<|im_end|>\n"
        "<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"
    ),
}


@dataclass(frozen=True)
class PromptIds:
    """Token ids of a rendered prompt, split at the image placeholder.

    Attributes:
        before_image: ids before ``<image>`` (BOS first when the tokenizer adds one).
        after_image: ids after ``<image>`` up to the last prompt token (no BOS).
    """

    before_image: list[int]
    after_image: list[int]

    @property
    def n_text_tokens(self) -> int:
        """Number of text tokens in the prompt."""
        return len(self.before_image) + len(self.after_image)

    def with_placeholder(self) -> list[int]:
        """Return LLaVA's flat id list with :data:`IMAGE_TOKEN_ID` at the image position."""
        return [*self.before_image, IMAGE_TOKEN_ID, *self.after_image]


def render_prompt(question: str, *, template: str) -> str:
    """Return the full prompt text for one question (spec §2.6).

    Args:
        question: the user's question, without any image placeholder.
        template: ``"vicuna_v1"`` or ``"chatml"``.

    Raises:
        ConfigError: unknown template.
        ValueError: the question contains the image placeholder.
    """
    if template not in _TEMPLATES:
        raise ConfigError(f"chat template {template!r} is not one of {sorted(_TEMPLATES)}")
    if IMAGE_PLACEHOLDER in question:
        raise ValueError(f"the question must not contain {IMAGE_PLACEHOLDER!r}: {question!r}")
    message = IMAGE_PLACEHOLDER + "\n" + question + "\n"
    return _TEMPLATES[template].replace("{message}", message)


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase, question: str, *, template: str
) -> PromptIds:
    """Return the prompt's token ids around the image, as LLaVA's ``tokenizer_image_token`` does.

    Each text chunk is tokenized separately with the tokenizer's special tokens; when the first
    chunk starts with BOS, that BOS is kept once and the leading token of every chunk is dropped.
    """
    text = render_prompt(question, template=template)
    chunks = [tokenizer(chunk).input_ids for chunk in text.split(IMAGE_PLACEHOLDER)]
    bos = tokenizer.bos_token_id
    offset = 1 if bos is not None and chunks[0] and chunks[0][0] == bos else 0
    before = list(chunks[0])
    after = list(chunks[1][offset:])
    return PromptIds(before_image=before, after_image=after)
