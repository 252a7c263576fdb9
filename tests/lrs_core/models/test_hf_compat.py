"""transformers internals behind one module; its deprecations fail the tests."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import Qwen2Config

from lrs_core.models import hf_compat


def _config() -> Qwen2Config:
    return Qwen2Config(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    )


def test_causal_mask_warns_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = hf_compat.causal_mask(
            _config(), inputs_embeds=torch.zeros(1, 3, 16), attention_mask=None
        )
    assert mask is None or mask.shape[-1] == 3


def test_deprecated_keyword_is_a_test_error() -> None:
    """The suite's filters turn the old ``past_key_values=`` form into an error."""
    from transformers.masking_utils import create_causal_mask

    with pytest.raises(FutureWarning, match="past_key_values"):
        create_causal_mask(
            config=_config(),
            inputs_embeds=torch.zeros(1, 3, 16),
            attention_mask=None,
            past_key_values=None,
        )


def test_installed_transformers_is_in_the_tested_range() -> None:
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    assert version("transformers") in SpecifierSet(hf_compat.TESTED_TRANSFORMERS)


def test_only_hf_compat_touches_transformers_internals() -> None:
    """Outside hf_compat, lrs_core imports only public model/config/tokenizer classes."""
    import ast
    from pathlib import Path

    import lrs_core

    internal_names = {
        "AttentionInterface",
        "AttentionMaskInterface",
        "Cache",
        "DynamicCache",
        "create_causal_mask",
        "no_init_weights",
    }
    offenders = []
    root = Path(lrs_core.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "hf_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformers"):
                names = {alias.name for alias in node.names}
                if node.module != "transformers" or names & internal_names:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} {node.module}")
    assert not offenders, offenders
