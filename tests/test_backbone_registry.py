"""The audio backbone registry: a family defined and registered in this file alone trains, embeds, saves and reloads."""

import numpy as np
import pytest
import torch
from tiny import tiny_bert_config, tiny_tokenizer
from torch import nn
from transformers import AutoConfig, AutoModel, AutoProcessor, PreTrainedConfig

from atr import AtrConfig, AtrFeatureExtractor, AtrModel, AtrProcessor, AudioBackbone, register_audio_backbone, unregister_audio_backbone
from atr.backbones_atr import AUDIO_BACKBONES

SR = 8000


class ToyAudioConfig(PreTrainedConfig):
    """A toy encoder's config: band energies in, a 1-D convolution over frames."""

    model_type = "toy_audio"
    num_mel_bins: int = 8
    hidden_size: int = 16


class ToyAudioAdapter(nn.Module):
    """Band energies (N, frames, bands) to tokens (N, frames, hidden), one per frame; padded frames masked."""

    def __init__(self, audio_config):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(audio_config.num_mel_bins, audio_config.hidden_size, 3, padding=1), nn.GELU())
        self.hidden_size = audio_config.hidden_size

    def forward(self, features, frame_mask=None):
        return self.encoder(features.transpose(1, 2)).transpose(1, 2), self.token_mask(frame_mask)

    @staticmethod
    def token_mask(frame_mask):
        return None if frame_mask is None else frame_mask.bool()


class ToyBackbone(AudioBackbone):
    """Log energy of 8 equal slices of each 10 ms frame, 120 ms windows, zero-padded (the frame mask says where)."""

    name = "toy"
    model_type = ToyAudioConfig.model_type
    config_class = ToyAudioConfig
    config_hint = "a ToyAudioConfig"
    adapter = ToyAudioAdapter
    card_name = "a toy convolution"
    feature_defaults = {"sampling_rate": SR, "feature_size": 8, "hop_length": 80, "n_fft": 80, "window_s": 0.12}

    def extractor_kwargs(self, audio_config, overrides):
        return {"backbone": self.name, "feature_size": audio_config.num_mel_bins, **overrides}

    def chunk_feature_shape(self, extractor):
        return (extractor.window_samples // extractor.hop_length, extractor.feature_size)

    def featurize(self, extractor, chunks):
        frames, bands = self.chunk_feature_shape(extractor)
        padded = np.zeros((len(chunks), frames * extractor.hop_length), dtype=np.float32)
        for row, chunk in zip(padded, chunks):
            row[: len(chunk)] = chunk
        slices = padded.reshape(len(chunks), frames, bands, -1)
        features = np.log(np.mean(slices**2, axis=-1) + 1e-6).astype(np.float32)
        mask = np.arange(frames) * extractor.hop_length < np.array([len(c) for c in chunks])[:, None]
        return features, mask.astype(np.int64)


@pytest.fixture
def toy_family():
    """The toy family registered for one test, then forgotten, so other tests see only the built-in families."""
    AutoConfig.register(ToyAudioConfig.model_type, ToyAudioConfig, exist_ok=True)
    spec = register_audio_backbone(ToyBackbone())
    yield spec
    unregister_audio_backbone(spec.model_type)


def clips(seed=0):
    """Four noise bursts of 0.05 to 0.3 s at 8 kHz: one to three chunks each."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(int(seconds * SR)).astype(np.float32) * 0.3 for seconds in (0.05, 0.13, 0.3, 0.2)]


CAPTIONS = ["a dog bark", "rain then siren", "engine loud", "bird near"]


def test_a_family_registered_from_one_entry_trains_embeds_saves_and_reloads(toy_family, tmp_path):
    torch.manual_seed(0)
    config = AtrConfig(
        audio_config=ToyAudioConfig(), text_config=tiny_bert_config(), projection_dim=16, head_hidden_size=32,
        head_heads=4, cross_modal_heads=4, freeze_audio_encoder=False,
    )
    model = AtrModel(config)
    assert isinstance(model.audio_model, ToyAudioAdapter)
    processor = AtrProcessor(AtrFeatureExtractor.from_audio_config(config), tiny_tokenizer())
    batch = processor(text=CAPTIONS, audio=clips(), sampling_rate=SR, return_tensors="pt")
    assert batch["input_features"].shape == (4, 3, 12, 8) and batch["chunk_mask"].sum(1).tolist() == [1, 2, 3, 2]

    # one training step reaches the toy encoder's own weights
    model.train()
    before = model.audio_model.encoder[0].weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(**batch, return_loss=True).loss
    loss.backward()
    assert torch.isfinite(loss) and model.audio_model.encoder[0].weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, model.audio_model.encoder[0].weight)

    model.eval()
    audio = processor(audio=clips(1), sampling_rate=SR, return_tensors="pt")
    text = processor(text=CAPTIONS, return_tensors="pt")
    with torch.no_grad():
        audio_embeds, text_embeds = model.get_audio_features(**audio).pooler_output, model.get_text_features(**text).pooler_output

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded, reprocessor = AutoModel.from_pretrained(tmp_path).eval(), AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is AtrModel and reloaded.config.audio_config.model_type == "toy_audio"
    assert reprocessor.feature_extractor.backbone == "toy"
    with torch.no_grad():
        again = reloaded.get_audio_features(**reprocessor(audio=clips(1), sampling_rate=SR, return_tensors="pt")).pooler_output
        text_again = reloaded.get_text_features(**reprocessor(text=CAPTIONS, return_tensors="pt")).pooler_output
    torch.testing.assert_close(again, audio_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(text_again, text_embeds, rtol=0, atol=1e-6)


def test_unknown_audio_model_type_names_the_registered_families(toy_family):
    with pytest.raises(ValueError, match=r"'clap_audio_model', 'whisper', 'toy_audio'.*or a ToyAudioConfig"):
        AtrConfig(audio_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="clashes with the registered ToyBackbone"):
        register_audio_backbone(ToyBackbone())


def test_unregistered_family_is_refused_again():
    assert "toy_audio" not in AUDIO_BACKBONES  # the fixture forgot it
    AutoConfig.register(ToyAudioConfig.model_type, ToyAudioConfig, exist_ok=True)
    with pytest.raises(ValueError, match=r"audio_config has model_type 'toy_audio', expected one of \('clap_audio_model', 'whisper'\)"):
        AtrConfig(audio_config=ToyAudioConfig())
