"""transformers' own ModelTesterMixin and ConfigTester (its PyPI sdist, at the installed version) run against AtrModel."""

import subprocess
import unittest

import pytest
import torch
from tiny import tiny_atr_config, tiny_features
from transformers_sdist import common_tests

from atr import AtrConfig, AtrModel

try:
    modeling_common, configuration_common = common_tests()
except (RuntimeError, subprocess.TimeoutExpired) as error:  # offline: PyPI unreachable
    pytest.skip(f"transformers' common tests come from its sdist on PyPI: {error}", allow_module_level=True)


class AtrModelTester:
    """Tiny two-modality inputs: a batch of captions and of chunked clips, one clip with a padding chunk."""

    def __init__(self, parent, audio, batch_size=3, num_chunks=2, seq_length=7):
        self.parent, self.audio = parent, audio
        self.batch_size, self.num_chunks, self.seq_length = batch_size, num_chunks, seq_length
        self.is_training = True

    def get_config(self):
        return tiny_atr_config(audio=self.audio, text="bert")

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(5, config.text_config.vocab_size, (self.batch_size, self.seq_length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[-1, -2:] = 0  # a shorter caption
        chunk_mask = torch.ones(self.batch_size, self.num_chunks, dtype=torch.long)
        chunk_mask[-1, 1:] = 0  # a shorter clip
        inputs = {
            "input_ids": input_ids, "attention_mask": attention_mask, "chunk_mask": chunk_mask,
            "input_features": tiny_features(config, self.batch_size, self.num_chunks), "return_loss": True,
        }
        return config, inputs


class AtrCommonTests:
    """What both audio families share: the tester, the config tests and the deliberate departures, each skipped with why."""

    all_model_classes = (AtrModel,)
    audio = None
    test_resize_embeddings = False  # the text encoder's own tests cover its embeddings
    test_can_init_all_missing_weights_before_2023 = True  # the mixin dates a model by its config file's copyright line
    # last_hidden_state of get_audio_features is the chunk embeddings (batch, chunks, projection_dim), not encoder tokens
    skip_test_audio_features_output_shape = True

    def setUp(self):
        self.model_tester = AtrModelTester(self, self.audio)
        self.config_tester = configuration_common.ConfigTester(
            self, config_class=AtrConfig, has_text_modality=False, common_properties=[], projection_dim=16, head_heads=4
        )

    def test_config(self):
        self.config_tester.run_common_tests()


class AtrHtsatBertTest(AtrCommonTests, modeling_common.ModelTesterMixin, unittest.TestCase):
    audio = "clap"


class AtrWhisperBertTest(AtrCommonTests, modeling_common.ModelTesterMixin, unittest.TestCase):
    audio = "whisper"
