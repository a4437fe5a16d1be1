"""transformers' own ModelTesterMixin and ConfigTester (its PyPI sdist, at the installed version) run against AtrModel."""

import subprocess
import unittest

import pytest
import torch
from tiny import tiny_atr_config, tiny_features
from transformers.testing_utils import set_config_for_less_flaky_test
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

    def prepare_config_and_inputs_for_model_class(self, model_class):
        """What test_batching_equivalence builds its model from: a config without the output_hidden_states it turns on."""
        # AtrModel refuses that flag (a deliberate departure); every output it does return is still compared.
        config, inputs = self.prepare_config_and_inputs_for_common()
        set_config_for_less_flaky_test(config)
        return config, inputs


class AtrCommonTests:
    """What both audio families share: the tester, the config tests and the deliberate departures, each skipped with why."""

    all_model_classes = (AtrModel,)
    audio = None
    test_resize_embeddings = False  # the text encoder's own tests cover its embeddings
    test_can_init_all_missing_weights_before_2023 = True  # the mixin dates a model by its config file's copyright line
    _is_composite = True  # audio_config and text_config: the composite attention tests apply
    # last_hidden_state of get_audio_features is the chunk embeddings (batch, chunks, projection_dim), not encoder tokens
    skip_test_audio_features_output_shape = True

    def setUp(self):
        self.model_tester = AtrModelTester(self, self.audio)
        self.config_tester = configuration_common.ConfigTester(
            self, config_class=AtrConfig, has_text_modality=False, common_properties=[], projection_dim=16, head_heads=4
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip("transformers' export tests (its tests/exporters, not in the sdist) trace forward as one graph; atr exports "
                   "three (audio chunks, pooling, text: atr.export, tested in test_onnx.py)")
    def test_torch_export(self):
        pass


# The deliberate departures, and the tests that assume a layout AtrModel does not have: each skipped with its reason.
OUTPUT_FLAGS = "AtrModel refuses output_attentions / output_hidden_states (get_*_encoder_states return the encoders' states)"
NO_CHECKPOINTING = "AtrModel does not offer gradient checkpointing (supports_gradient_checkpointing = False)"
SKIPS = {
    "test_gradient_checkpointing_backward_compatibility": NO_CHECKPOINTING,
    "test_gradient_checkpointing_enable_disable": NO_CHECKPOINTING,
    "test_peft_gradient_checkpointing_enable_disable": NO_CHECKPOINTING,
    "test_enable_input_require_grads_with_gradient_checkpointing": NO_CHECKPOINTING,
    "test_training_gradient_checkpointing": NO_CHECKPOINTING,
    "test_attention_outputs": OUTPUT_FLAGS,
    "test_hidden_states_output": OUTPUT_FLAGS,
    "test_retain_grad_hidden_states_attentions": OUTPUT_FLAGS,
    "test_get_text_features_attentions": OUTPUT_FLAGS,
    "test_get_text_features_hidden_states": OUTPUT_FLAGS,
    "test_get_audio_features_attentions": OUTPUT_FLAGS,
    "test_get_audio_features_hidden_states": OUTPUT_FLAGS,
    "test_can_capture_specific_layers_hidden_states": OUTPUT_FLAGS,
    "test_capture_outputs_decorator": OUTPUT_FLAGS + "; its sub-models' recorded outputs are not returned",
    "test_model_outputs_equivalence": OUTPUT_FLAGS + "; tuple/dict equivalence is in test_transformers_conventions.py",
    "test_eager_matches_sdpa_inference": OUTPUT_FLAGS + ", and this test compares hidden states",
    "test_model_get_set_embeddings": "two encoders, no single input embedding: text_model.get_input_embeddings() (as ClapModel)",
    "test_sdpa_can_dispatch_composite_models": "audio_model is an adapter around the encoder (audio_model.encoder); "
    "SDPA dispatch is in test_transformers_conventions.py",
}


def skip_with_reason(skips):
    """Class decorator: replace each test named in `skips` (and its parameterized variants) by a skip that says why."""

    def decorate(cls):
        for name in dir(cls):
            base = next((skip for skip in skips if name == skip or name.startswith(skip + "_")), None)
            if base is not None and callable(getattr(cls, name)):
                setattr(cls, name, unittest.skip(skips[base])(getattr(cls, name)))
        return cls

    return decorate


HTSAT_SKIPS = {
    **SKIPS,
    "test_can_set_attention_dynamically_composite_model": "HTSAT has eager attention only, so an HTSAT AtrModel refuses "
    "SDPA, its own included (test_transformers_conventions.py); the Whisper + BERT model runs this test",
}


@skip_with_reason(HTSAT_SKIPS)
class AtrHtsatBertTest(AtrCommonTests, modeling_common.ModelTesterMixin, unittest.TestCase):
    audio = "clap"


@skip_with_reason(SKIPS)
class AtrWhisperBertTest(AtrCommonTests, modeling_common.ModelTesterMixin, unittest.TestCase):
    audio = "whisper"
