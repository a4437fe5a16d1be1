"""AudioBackbone: everything atr knows about one audio backbone family, subclassed once per family (atr/backbone_<family>.py)."""

import os

import numpy as np
from torch import nn
from transformers import FeatureExtractionMixin, PreTrainedConfig, PreTrainedModel, SequenceFeatureExtractor


def chunk_length_s(extractor: "AtrFeatureExtractor") -> float | int:
    """The extractor's window in seconds, an int when whole: the backbone extractors' sample counts stay integers."""
    return int(extractor.window_s) if extractor.window_s.is_integer() else extractor.window_s


class AudioBackbone:
    """One audio backbone family: its config check, numpy features per chunk, torch adapter, checkpoint loading, ONNX and card facts.

    A family subclasses this in one flat file and is registered with `backbones_atr.register_audio_backbone`.
    The adapter (`adapter(audio_config)`) is an `nn.Module` with `.encoder` (the backbone, whose state-dict keys
    a saved model stores under `audio_model.encoder.`), `.hidden_size`, `forward(features (N, *chunk_feature_shape),
    frame_mask (N, frames) or None) -> (tokens (N, L, H), token mask (N, L) or None)` and `token_mask(frame_mask)`.
    """

    name: str = ""  # AtrFeatureExtractor(backbone=name): saved in preprocessor_config.json
    model_type: str = ""  # the audio config's model_type, saved in config.json: the registry key
    config_class: type | None = None  # the audio config class (its fields are the settings an audio config block may hold)
    config_hint: str = ""  # what to pass, in errors: "a WhisperConfig"
    checkpoint_model_types: tuple[str, ...] = ()  # model_type of the checkpoints from_pretrained_backbones loads
    checkpoint_hint: str = ""  # the checkpoints, in errors: "Whisper"
    adapter: type | None = None  # the torch adapter class
    card_name: str = ""  # the audio encoder as the model card names it
    # sampling_rate, feature_size, hop_length, n_fft, window_s: the backbone's own feature extractor's defaults
    feature_defaults: dict = {}
    frame_axis: int = 0  # the time axis of one chunk's features: audio_attention_mask's frames, the ONNX frame mask

    # ---- config ---------------------------------------------------------------------------------------------

    def check_config(self, audio_config: PreTrainedConfig) -> None:
        """Refuse an audio config of this family that atr cannot run (AtrConfig calls it); the default accepts all."""

    def encoder_width(self, audio_config: PreTrainedConfig) -> int:
        """The width of the encoder's tokens, for the model card."""
        return audio_config.hidden_size

    def encoder_depth(self, audio_config: PreTrainedConfig) -> int | None:
        """The number of encoder layers, for the model card (None: not stated)."""
        return None

    # ---- numpy features (AtrFeatureExtractor) ---------------------------------------------------------------

    def extractor_kwargs(self, audio_config: PreTrainedConfig, overrides: dict) -> dict:
        """AtrFeatureExtractor arguments matching an audio config (`from_audio_config`), `overrides` applied."""
        return {"backbone": self.name, **overrides}

    def pretrained_extractor_kwargs(self, source: FeatureExtractionMixin) -> dict | None:
        """AtrFeatureExtractor arguments copying a checkpoint's own feature extractor `source`; None if not this family's."""
        return None

    def pretrained_window(self, kwargs: dict, audio_config: PreTrainedConfig) -> dict:
        """Arguments that fit a pretrained checkpoint's extractor `kwargs` to an audio config that changed its window."""
        return {}

    def chunk_extractor(self, extractor: "AtrFeatureExtractor") -> SequenceFeatureExtractor | None:
        """The per-chunk featuriser `extractor` keeps (rebuilt from its attributes, never saved); None if featurize needs none."""
        return None

    def chunk_feature_shape(self, extractor: "AtrFeatureExtractor") -> tuple[int, ...]:
        """The shape of one chunk's features."""
        raise NotImplementedError(f"{type(self).__name__} must define chunk_feature_shape")

    def featurize(self, extractor: "AtrFeatureExtractor", chunks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, *chunk_feature_shape) float32 and frame mask (N, frames) int64 of N 1-D chunks of at most one window."""
        raise NotImplementedError(f"{type(self).__name__} must define featurize")

    # ---- torch ----------------------------------------------------------------------------------------------

    def sdpa_refusal(self) -> str:
        """Why `attn_implementation="sdpa"` cannot reach this family's encoder ("" when it can): AtrModel refuses with it."""
        return ""

    def init_recreated_weights(self, adapter: nn.Module) -> None:
        """Initialise encoder weights that transformers re-created rather than loaded, as the family's own init would."""

    def load_backbone(self, path: str | os.PathLike, **config_overrides) -> PreTrainedModel:
        """A pretrained encoder from a checkpoint: its `.config` builds the adapter and its state dict loads into `.encoder`."""
        raise NotImplementedError(f"{type(self).__name__} loads no pretrained checkpoints: build AtrModel from an AtrConfig")

    # ---- tests ----------------------------------------------------------------------------------------------

    def tiny_config(self) -> PreTrainedConfig:
        """A tiny random audio config of this family, for tests."""
        raise NotImplementedError(f"{type(self).__name__} has no tiny config")

    def tiny_feature_shape(self, audio_config: PreTrainedConfig) -> tuple[int, ...]:
        """One chunk's feature shape that the tiny config's adapter takes, for random test inputs."""
        raise NotImplementedError(f"{type(self).__name__} has no tiny feature shape")


__all__ = ["AudioBackbone", "chunk_length_s"]
