import pytest

from lrs_core.errors import ConfigError
from lrs_core.models.prompt import IMAGE_TOKEN_ID, render_prompt, tokenize_prompt
from lrs_core.models.tiny import build_tokenizer

QUESTION = "How many ships are in the harbour?"


def test_chatml_string_is_the_reference_one():
    assert render_prompt(QUESTION, template="chatml") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        f"{QUESTION}\n<|im_end|>\n<|im_start|>assistant\n"
    )


def test_vicuna_string_is_the_reference_one():
    assert render_prompt(QUESTION, template="vicuna_v1") == (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions. "
        "USER: <image>\n"
        f"{QUESTION}\n ASSISTANT:"
    )


def test_rejects_unknown_template_and_placeholder_in_question():
    with pytest.raises(ConfigError):
        render_prompt(QUESTION, template="alpaca")
    with pytest.raises(ValueError, match="<image>"):
        render_prompt("<image> what?", template="chatml")


def test_llava_tokenization_keeps_only_the_first_bos():
    tokenizer = build_tokenizer(family="llava")
    ids = tokenize_prompt(tokenizer, QUESTION, template="vicuna_v1")
    flat = ids.with_placeholder()
    assert flat[0] == tokenizer.bos_token_id
    assert flat.count(tokenizer.bos_token_id) == 1
    assert flat.count(IMAGE_TOKEN_ID) == 1
    before, after = render_prompt(QUESTION, template="vicuna_v1").split("<image>")
    assert tokenizer.decode(ids.before_image, skip_special_tokens=True) == before
    assert tokenizer.decode(ids.after_image) == after
    # The query token of the RFM is the ':' of "ASSISTANT:" (spec §3).
    assert tokenizer.decode(ids.after_image[-1:]) == ":"


def test_chatml_tokenization_has_no_bos_and_ends_with_newline():
    tokenizer = build_tokenizer(family="qwen2")
    ids = tokenize_prompt(tokenizer, QUESTION, template="chatml")
    assert tokenizer.bos_token_id is None
    text = render_prompt(QUESTION, template="chatml")
    assert (
        tokenizer.decode(ids.before_image) + "<image>" + tokenizer.decode(ids.after_image) == text
    )
    assert tokenizer.decode(ids.after_image[-1:]) == "\n"
    assert ids.n_text_tokens == len(ids.before_image) + len(ids.after_image)
