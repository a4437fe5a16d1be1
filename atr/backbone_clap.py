"""The HTSAT family (transformers `ClapAudioModel`, weights from a CLAP checkpoint): features, adapter and facts in one place."""

import functools
import math
import os

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn
from transformers import ClapAudioConfig, ClapAudioModel, ClapFeatureExtractor, FeatureExtractionMixin
from transformers.audio_utils import power_to_db, window_function

from .backbone_spec import AudioBackbone, chunk_length_s


class _ClapChunkFeatures(ClapFeatureExtractor):
    """`ClapFeatureExtractor` whose STFT runs over all frames at once instead of a Python loop over frames."""

    def _np_extract_fbank_features(self, waveform, mel_filters=None):
        """Log-mel (frames, mels), bit-identical to `transformers.audio_utils.spectrogram` as CLAP calls it."""
        # Same steps and dtypes as `spectrogram(..., power=2.0, log_mel="dB")` (complex64 storage included), so the
        # result is bit-identical (tests/test_feature_extraction.py checks it against the upstream extractor).
        n_fft, half = self.fft_window_size, self.fft_window_size // 2
        padded = np.pad(waveform, (half, half), mode="reflect").astype(np.float64)
        hann = window_function(n_fft, "hann").astype(np.float64)
        frames = sliding_window_view(padded, n_fft)[:: self.hop_length] * hann
        power = np.abs(np.fft.rfft(frames).astype(np.complex64), dtype=np.float64) ** 2.0
        mel = np.maximum(1e-10, np.dot(mel_filters.T, power.T))
        return np.asarray(power_to_db(mel), np.float32).T


@functools.lru_cache(maxsize=8)
def bicubic_stretch_matrix(frames: int, target: int) -> np.ndarray:
    """(target, frames) matrix of PyTorch's 1-D bicubic interpolation with align_corners=True (a = -0.75, edges clamped)."""
    # numpy, not F.interpolate of an identity: built at trace time, ONNX export sees one constant, not a traced resize
    a = -0.75
    # float32 positions, as PyTorch's CPU kernel computes them: the same taps, and weights equal up to float rounding
    source = np.arange(target, dtype=np.float32) * np.float32((frames - 1) / (target - 1))
    first = np.floor(source).astype(np.int64)
    t = (source - first).astype(np.float64)
    near, far = np.stack([t, 1 - t]), np.stack([t + 1, 2 - t])
    inner = ((a + 2) * near - (a + 3)) * near * near + 1  # taps first and first + 1
    outer = ((a * far - 5 * a) * far + 8 * a) * far - 4 * a  # taps first - 1 and first + 2
    matrix = np.zeros((target, frames))
    rows = np.arange(target)
    for offset, weight in zip((-1, 0, 1, 2), (outer[0], inner[0], inner[1], outer[1])):
        np.add.at(matrix, (rows, np.clip(first + offset, 0, frames - 1)), weight)
    return matrix.astype(np.float32)


class ClapAudioAdapter(nn.Module):
    """HTSAT (transformers `ClapAudioModel`, fused or not): chunk features (N, 1 or 4, frames, mels) to tokens (N, F'*T', hidden)."""

    def __init__(self, audio_config: ClapAudioConfig):
        super().__init__()
        self.encoder = ClapAudioModel(audio_config)
        self.hidden_size = audio_config.hidden_size
        self.fused = bool(getattr(audio_config, "enable_fusion", False))
        htsat = self.encoder.audio_encoder
        self.image_frames = int(htsat.spec_size * htsat.freq_ratio)  # the frames HTSAT stretches a chunk to

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Return the token sequence (N, L, H) and its mask (None: repeat-padded windows hold real sound everywhere)."""
        # A chunk never exceeds the window, so no chunk is "longer" and the fusion branch (local crops) stays off.
        is_longer = torch.zeros(features.shape[0], 1, dtype=torch.bool, device=features.device) if self.fused else None
        hidden = self.encoder(input_features=self._stretch_frames(features), is_longer=is_longer).last_hidden_state  # (N, H, F', T')
        return hidden.flatten(2).transpose(1, 2), None

    def _stretch_frames(self, features):
        """With BatchNorm on running statistics, HTSAT's bicubic stretch of the frames done first, as one matmul (equal up to rounding)."""
        # The encoder stretches (N, C, frames, mels) along time by bicubic interpolation after its BatchNorm; on a CPU
        # that interpolation costs about 6% of the forward pass (ONNX Runtime and PyTorch alike). In eval mode the
        # BatchNorm is a per-mel affine map and the interpolation weights of each output frame sum to 1, so the two
        # commute: stretching first, by the interpolation's own matrix, gives the same input and the encoder skips its
        # own. A BatchNorm in training uses the real frames' statistics, so then the encoder keeps its path.
        frames, norm = features.shape[-2], self.encoder.audio_encoder.batch_norm
        if (norm.training or not norm.track_running_stats) or frames >= self.image_frames:
            return features
        matrix = torch.from_numpy(bicubic_stretch_matrix(frames, self.image_frames)).to(features.device)
        # float32 like PyTorch's interpolation, whatever the features' dtype
        return torch.einsum("st,nctm->ncsm", matrix, features.float()).to(features.dtype)

    @staticmethod
    def token_mask(frame_mask: torch.Tensor | None) -> None:
        """HTSAT tokens mix frequency and time in a folded image, and its input is repeat-padded: every token is real."""
        return None


class ClapBackbone(AudioBackbone):
    """HTSAT: 48 kHz log-mel chunks of 10 s, repeat-padded (every frame real), 1 channel or 4 when fused."""

    name = "clap"
    model_type = "clap_audio_model"
    config_class = ClapAudioConfig
    config_hint = "a ClapAudioConfig (HTSAT)"
    checkpoint_model_types = ("clap",)
    checkpoint_hint = "CLAP (HTSAT)"
    adapter = ClapAudioAdapter
    card_name = "HTSAT (transformers `ClapAudioModel`)"
    feature_defaults = {"sampling_rate": 48_000, "feature_size": 64, "hop_length": 480, "n_fft": 1024, "window_s": 10.0}
    frame_axis = 1  # (channels, frames, mels)

    def extractor_kwargs(self, audio_config: ClapAudioConfig, overrides: dict) -> dict:
        """The config's mel bins, and a hop that fits the window into HTSAT's spectrogram image."""
        kwargs = dict(backbone=self.name, feature_size=audio_config.num_mel_bins)
        kwargs.update(overrides)
        sampling_rate = kwargs.get("sampling_rate") or self.feature_defaults["sampling_rate"]
        window = int(round((kwargs.get("window_s") or self.feature_defaults["window_s"]) * sampling_rate))
        # HTSAT folds the mel into a spec_size x spec_size image: more frames than fit would be cut off.
        max_frames = audio_config.spec_size * (audio_config.spec_size // audio_config.num_mel_bins)
        if "hop_length" not in kwargs:
            hop = sampling_rate // 100
            if window // hop + 1 > max_frames:
                hop = math.ceil(window / (max_frames - 1))
            kwargs["hop_length"] = hop
        return kwargs

    def pretrained_extractor_kwargs(self, source: FeatureExtractionMixin) -> dict | None:
        """A CLAP checkpoint's mel scale, range, rate, window and fused-or-not truncation mode."""
        if not isinstance(source, ClapFeatureExtractor):
            return None
        return dict(
            backbone=self.name, sampling_rate=source.sampling_rate, feature_size=source.feature_size,
            hop_length=source.hop_length, n_fft=source.fft_window_size, frequency_min=source.frequency_min,
            frequency_max=source.frequency_max, window_s=source.nb_max_samples / source.sampling_rate,
            truncation=source.truncation,
        )

    def chunk_extractor(self, extractor: "AtrFeatureExtractor") -> ClapFeatureExtractor:
        """CLAP's own extractor, repeat-padding each chunk to the window."""
        if extractor.truncation not in ("rand_trunc", "fusion"):
            raise ValueError(f"truncation is {extractor.truncation!r}, expected 'rand_trunc' (unfused CLAP) or 'fusion' (fused CLAP)")
        # Truncation only acts on clips longer than the window, which a chunk never is: no random crop remains.
        return _ClapChunkFeatures(
            feature_size=extractor.feature_size, sampling_rate=extractor.sampling_rate, hop_length=extractor.hop_length,
            max_length_s=chunk_length_s(extractor), fft_window_size=extractor.n_fft, padding_value=extractor.padding_value,
            frequency_min=extractor.frequency_min, frequency_max=extractor.frequency_max,
            truncation=extractor.truncation, padding="repeatpad",
        )

    def chunk_feature_shape(self, extractor: "AtrFeatureExtractor") -> tuple[int, int, int]:
        """(1, or 4 with fusion; frames; mels)."""
        return (4 if extractor.truncation == "fusion" else 1, extractor.window_samples // extractor.hop_length + 1, extractor.feature_size)

    def featurize(self, extractor: "AtrFeatureExtractor", chunks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """CLAP's features; the frame mask is all ones, since repeat-padding fills the window with the chunk's own sound."""
        # CLAP's fusion mode draws from numpy's global RNG even when no chunk is long: keep the caller's stream.
        state = np.random.get_state()
        out = extractor.backbone_extractor(chunks, sampling_rate=extractor.sampling_rate, max_length=extractor.window_samples)
        np.random.set_state(state)
        mask = np.ones((len(chunks), extractor.frames_per_chunk), dtype=np.int64)
        return np.asarray(out["input_features"], dtype=np.float32), mask

    def sdpa_refusal(self) -> str:
        """HTSAT has eager attention only (transformers' ClapAudioModel)."""
        return "" if ClapAudioModel._supports_sdpa else "HTSAT (ClapAudioModel) has eager attention only"

    def load_backbone(self, path: str | os.PathLike, **config_overrides) -> ClapAudioModel:
        """HTSAT from a `ClapModel` checkpoint (`ClapAudioModel.from_pretrained` would silently load no weights)."""
        from transformers import ClapModel

        return ClapModel.from_pretrained(path, **config_overrides).audio_model

    def tiny_config(self) -> ClapAudioConfig:
        """HTSAT with 16 mels and a 64x64 spectrogram image: time frames must be <= 256."""
        return ClapAudioConfig(
            patch_size=2, num_mel_bins=16, window_size=4, spec_size=64, patch_stride=2, hidden_size=32,
            patch_embeds_hidden_size=16, projection_dim=32, depths=[2, 2], num_hidden_layers=2, num_attention_heads=[2, 2],
        )

    def tiny_feature_shape(self, audio_config: ClapAudioConfig) -> tuple[int, int, int]:
        """64 frames of one channel."""
        return (1, 64, audio_config.num_mel_bins)


__all__ = ["ClapAudioAdapter", "ClapBackbone", "bicubic_stretch_matrix"]
