"""AtrModel follows transformers' conventions where they apply: config flags, re-created weights, main input, attention."""

import copy
import inspect

import pytest
import torch
from tiny import tiny_atr_config, tiny_features
from transformers.models.whisper.modeling_whisper import sinusoids
from transformers.utils import ModelOutput

from atr import AtrModel


def make_model(audio="clap", **overrides):
    torch.manual_seed(0)
    return AtrModel(tiny_atr_config(audio, "bert", **overrides)).eval()


def inputs(config, batch=2):
    ids = torch.randint(5, 99, (batch, 6), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "input_features": tiny_features(config, batch, 2)}


@pytest.mark.parametrize("audio", ["clap", "whisper"])
def test_config_return_dict_false_gives_tuples_unless_the_keyword_says_otherwise(audio):
    model = make_model(audio)
    batch = inputs(model.config)
    model.config.return_dict = False
    calls = {
        "forward": lambda **kw: model(**batch, **kw),
        "get_text_features": lambda **kw: model.get_text_features(input_ids=batch["input_ids"], **kw),
        "get_audio_features": lambda **kw: model.get_audio_features(input_features=batch["input_features"], **kw),
    }
    for name, call in calls.items():
        with torch.no_grad():
            as_tuple, as_output = call(), call(return_dict=True)
        assert isinstance(as_tuple, tuple), name
        assert isinstance(as_output, ModelOutput), name
        assert all(torch.equal(a, b) for a, b in zip(as_tuple, as_output.to_tuple())), name


@pytest.mark.parametrize("flag", ["output_attentions", "output_hidden_states"])
def test_config_output_flags_are_refused_like_the_keywords(flag):
    model = make_model(attn_implementation="eager")  # transformers refuses output_attentions itself under sdpa
    batch = inputs(model.config)
    setattr(model.config, flag, True)
    with pytest.raises(ValueError, match=f"config.{flag}=True.*get_text_encoder_states"):
        model(**batch)
    with pytest.raises(ValueError, match=f"config.{flag}=True"):
        model.get_text_features(input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match=f"config.{flag}=True"):
        model.get_audio_features(input_features=batch["input_features"])
    # the keyword wins over the config, as in transformers: an explicit False runs
    assert model.get_text_features(input_ids=batch["input_ids"], **{flag: False}).pooler_output.shape == (2, 16)


def test_whisper_positions_recreated_on_load_are_whispers_sinusoids(tmp_path):
    model = make_model("whisper")
    with torch.no_grad():  # a checkpoint's own positions (a real Whisper's differ slightly from the formula)
        model.audio_model.encoder.embed_positions.weight.add_(0.01)
    model.save_pretrained(tmp_path)
    reloaded = AtrModel.from_pretrained(tmp_path)
    assert torch.equal(reloaded.audio_model.encoder.embed_positions.weight, model.audio_model.encoder.embed_positions.weight)
    shorter = copy.deepcopy(model.config)
    shorter.audio_config.max_source_positions = 30
    resized = AtrModel.from_pretrained(tmp_path, config=shorter, ignore_mismatched_sizes=True)
    assert torch.allclose(resized.audio_model.encoder.embed_positions.weight, sinusoids(30, 16))
    fresh = AtrModel.from_pretrained(None, config=copy.deepcopy(model.config), state_dict={})
    assert torch.allclose(fresh.audio_model.encoder.embed_positions.weight, sinusoids(50, 16))


def test_main_input_name_is_forwards_first_argument():
    # transformers' convention: PreTrainedModel's default, which AtrModel keeps as ClapModel does; the Trainer counts
    # tokens and FLOPs on it
    parameters = [p for p in inspect.signature(AtrModel.forward).parameters if p != "self"]
    assert AtrModel.main_input_name == parameters[0] == "input_ids"


def test_sdpa_is_used_where_every_encoder_has_it_and_refused_by_atr_where_one_lacks_it(tmp_path):
    whisper, htsat = tmp_path / "whisper", tmp_path / "htsat"
    make_model("whisper").save_pretrained(whisper)
    make_model("clap").save_pretrained(htsat)
    model = AtrModel.from_pretrained(whisper, attn_implementation="sdpa")
    assert (model.config.audio_config._attn_implementation, model.config.text_config._attn_implementation) == ("sdpa", "sdpa")
    with pytest.raises(ValueError, match="HTSAT.*eager attention only: leave attn_implementation unset"):
        AtrModel.from_pretrained(htsat, attn_implementation="sdpa")
    # unset: each encoder picks the best it has; per encoder: what each one supports
    for request in (None, {"text_config": "sdpa", "audio_config": "eager"}):
        model = AtrModel.from_pretrained(htsat, attn_implementation=request)
        assert (model.config.audio_config._attn_implementation, model.config.text_config._attn_implementation) == ("eager", "sdpa")
    with pytest.raises(ValueError, match="HTSAT"):
        model.set_attn_implementation("sdpa")
