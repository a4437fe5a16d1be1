"""The Whisper encoder family: features, adapter and facts in one place."""

import copy
import os

import numpy as np
import torch
from torch import nn
from transformers import initialization as init
from transformers import FeatureExtractionMixin, WhisperConfig, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder, sinusoids

from .backbone_spec import AudioBackbone, chunk_length_s


class WhisperAudioAdapter(nn.Module):
    """Whisper encoder: chunk features (N, mels, 2*max_source_positions) to tokens (N, max_source_positions, d_model)."""

    def __init__(self, audio_config: WhisperConfig):
        super().__init__()
        self.encoder = WhisperEncoder(audio_config)
        self.config = audio_config  # read by WhisperModel._mask_input_features (SpecAugment)
        self.hidden_size = audio_config.d_model
        self.expected_frames = 2 * audio_config.max_source_positions

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the token sequence (N, L, H) and its mask (N, L): which tokens hold audio rather than zero padding."""
        if features.shape[-1] != self.expected_frames:
            raise ValueError(
                f"input_features have {features.shape[-1]} frames per chunk, the Whisper encoder expects "
                f"{self.expected_frames} (2 * max_source_positions): build the feature extractor with "
                "AtrFeatureExtractor.from_audio_config(config.audio_config)"
            )
        if self.training and self.config.apply_spec_augment:
            # WhisperConfig's own SpecAugment (apply_spec_augment, mask_time_*, mask_feature_*), which WhisperEncoder
            # alone ignores; time masks fall on real frames only. WhisperModel's method needs just .config and .training.
            features = WhisperModel._mask_input_features(self, features.clone(), frame_mask)
        return self.encoder(input_features=features).last_hidden_state, self.token_mask(frame_mask)

    @staticmethod
    def token_mask(frame_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Token mask (N, L) from the frame mask (N, 2L): the second conv has stride 2, so token t is centred on frame 2t."""
        return None if frame_mask is None else frame_mask[:, ::2].bool()


class WhisperBackbone(AudioBackbone):
    """Whisper's encoder: 16 kHz log-mel chunks of 2*max_source_positions frames (30 s), zero-padded (the frame mask says where)."""

    name = "whisper"
    model_type = "whisper"
    config_class = WhisperConfig
    config_hint = "a WhisperConfig"
    checkpoint_model_types = ("whisper",)
    checkpoint_hint = "Whisper"
    adapter = WhisperAudioAdapter
    card_name = "Whisper encoder"
    feature_defaults = {"sampling_rate": 16_000, "feature_size": 80, "hop_length": 160, "n_fft": 400, "window_s": 30.0}
    frame_axis = 1  # (mels, frames)

    def encoder_width(self, audio_config: WhisperConfig) -> int:
        """d_model."""
        return audio_config.d_model

    def encoder_depth(self, audio_config: WhisperConfig) -> int:
        """encoder_layers (fewer than the checkpoint's when `audio_config_overrides` cut them)."""
        return audio_config.encoder_layers

    def extractor_kwargs(self, audio_config: WhisperConfig, overrides: dict) -> dict:
        """The config's mel bins, and a window of exactly 2*max_source_positions frames (the hop follows the window)."""
        sampling_rate = overrides.get("sampling_rate") or self.feature_defaults["sampling_rate"]
        frames = 2 * audio_config.max_source_positions
        kwargs = dict(backbone=self.name, feature_size=audio_config.num_mel_bins)
        kwargs.update(overrides)
        if kwargs.get("window_s") is None:
            hop = kwargs.get("hop_length") or self.feature_defaults["hop_length"]
            kwargs["window_s"] = frames * hop / sampling_rate
        window = kwargs["window_s"] * sampling_rate
        hop = window / frames
        if abs(hop - round(hop)) > 1e-6:
            raise ValueError(
                f"window_s={kwargs['window_s']} is {window:g} samples, which does not split into "
                f"2*max_source_positions={frames} whole frames: pick window_s so that window_s*{sampling_rate}/"
                f"{frames} is an integer (e.g. {frames * 160 / sampling_rate:g} s for hop 160)"
            )
        kwargs["hop_length"] = int(round(hop))
        return kwargs

    def pretrained_extractor_kwargs(self, source: FeatureExtractionMixin) -> dict | None:
        """A Whisper checkpoint's rate, mels, hop, FFT size and window."""
        if not isinstance(source, WhisperFeatureExtractor):
            return None
        return dict(
            backbone=self.name, sampling_rate=source.sampling_rate, feature_size=source.feature_size,
            hop_length=source.hop_length, n_fft=source.n_fft, window_s=source.n_samples / source.sampling_rate,
        )

    def pretrained_window(self, kwargs: dict, audio_config: WhisperConfig) -> dict:
        """The window follows the encoder's positions (`audio_config_overrides` may have changed max_source_positions)."""
        return {"window_s": 2 * audio_config.max_source_positions * int(kwargs["hop_length"]) / int(kwargs["sampling_rate"])}

    def chunk_extractor(self, extractor: "AtrFeatureExtractor") -> WhisperFeatureExtractor:
        """Whisper's own extractor over one window."""
        window = extractor.window_samples
        if window % extractor.hop_length:
            raise ValueError(f"window_s={extractor.window_s} ({window} samples) is not a multiple of hop_length={extractor.hop_length}: "
                             "Whisper needs a whole number of frames per window")
        return WhisperFeatureExtractor(
            feature_size=extractor.feature_size, sampling_rate=extractor.sampling_rate, hop_length=extractor.hop_length,
            chunk_length=chunk_length_s(extractor), n_fft=extractor.n_fft, padding_value=extractor.padding_value,
        )

    def chunk_feature_shape(self, extractor: "AtrFeatureExtractor") -> tuple[int, int]:
        """(mels, frames)."""
        return (extractor.feature_size, extractor.window_samples // extractor.hop_length)

    def featurize(self, extractor: "AtrFeatureExtractor", chunks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Whisper's features and its attention mask: which frames hold the chunk rather than zero padding."""
        out = extractor.backbone_extractor(
            chunks, sampling_rate=extractor.sampling_rate, max_length=extractor.window_samples, return_attention_mask=True
        )
        return np.asarray(out["input_features"], dtype=np.float32), np.asarray(out["attention_mask"], dtype=np.int64)

    def init_recreated_weights(self, adapter: WhisperAudioAdapter) -> None:
        """Re-created positions (e.g. another max_source_positions) are Whisper's sinusoids, not N(0, 0.02); loaded ones stay."""
        # transformers skips a custom model's submodules without parameters of their own, so Whisper's init never runs here
        init.copy_(adapter.encoder.embed_positions.weight, sinusoids(*adapter.encoder.embed_positions.weight.shape))

    def load_backbone(self, path: str | os.PathLike, max_source_positions: int | None = None, encoder_layers: int | None = None,
                      **config_overrides) -> WhisperEncoder:
        """The encoder of a Whisper checkpoint: its first `encoder_layers` layers, its own sinusoidal positions cut (or extended) to `max_source_positions`."""
        # `WhisperEncoder.from_pretrained` would silently load none; a smaller config loaded with ignore_mismatched_sizes
        # would re-create the positions (close to Whisper's, not equal), so the checkpoint's own rows are kept instead.
        # Fewer layers are cut from the loaded encoder too (a smaller config would load with every later layer reported
        # unexpected); the checkpoint's final layer norm then applies to the last layer kept.
        encoder = WhisperModel.from_pretrained(path, **config_overrides).get_encoder()
        config, state = copy.deepcopy(encoder.config), encoder.state_dict()
        if encoder_layers is not None and encoder_layers != config.encoder_layers:
            if not 0 < encoder_layers <= config.encoder_layers:
                raise ValueError(f"audio_config_overrides encoder_layers {encoder_layers}: the audio checkpoint has {config.encoder_layers} encoder layers;"
                                 f" keep between 1 and {config.encoder_layers}")
            config.encoder_layers = encoder_layers
            state = {name: tensor for name, tensor in state.items() if not name.startswith("layers.") or int(name.split(".")[1]) < encoder_layers}
        available = config.max_source_positions
        if max_source_positions is not None and max_source_positions != available:
            config.max_source_positions = max_source_positions
            positions = sinusoids(max_source_positions, config.d_model)  # beyond the checkpoint: Whisper's formula (a test model)
            kept = min(available, max_source_positions)
            positions[:kept] = state["embed_positions.weight"][:kept]
            state["embed_positions.weight"] = positions
        if config.to_dict() == encoder.config.to_dict():
            return encoder
        resized = WhisperEncoder(config)
        resized.load_state_dict(state)
        return resized

    def tiny_config(self) -> WhisperConfig:
        """Whisper encoder with 80 mels and 100 frames (50 positions) per chunk."""
        return WhisperConfig(
            d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=16, decoder_ffn_dim=16, max_source_positions=50, max_position_embeddings=20, num_mel_bins=80,
            vocab_size=99, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        )

    def tiny_feature_shape(self, audio_config: WhisperConfig) -> tuple[int, int]:
        """(mels, 2*max_source_positions)."""
        return (audio_config.num_mel_bins, 2 * audio_config.max_source_positions)


__all__ = ["WhisperAudioAdapter", "WhisperBackbone"]
