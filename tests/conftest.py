"""Fixtures shared by the test files."""

import pytest
import torch
from tiny import tiny_bert_config, tiny_tokenizer
from transformers import BertModel


def pytest_configure(config):
    """Register the markers transformers' common tests (test_transformers_common.py) put on theirs."""
    for marker in ("slow", "accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test"):
        config.addinivalue_line("markers", f"{marker}: a marker of transformers' own tests")


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory):
    """A tiny BERT text encoder and tokenizer saved to disk (stands in for a Hub id)."""
    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)
