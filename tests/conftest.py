"""Fixtures shared by the test files."""

import pytest
import torch
from tiny import tiny_bert_config, tiny_tokenizer
from transformers import BertModel


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory):
    """A tiny BERT text encoder and tokenizer saved to disk (stands in for a Hub id)."""
    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)
