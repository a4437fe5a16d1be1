"""AtrProcessor: one call that turns audio and captions into a batch `AtrModel` accepts."""

import os
from typing import TYPE_CHECKING

from transformers import PreTrainedConfig, PreTrainedTokenizerBase
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

if TYPE_CHECKING:
    from .feature_extraction_atr import AtrFeatureExtractor

# Flat keyword arguments and the one component each belongs to. transformers' own routing sends `padding`,
# `truncation` and `max_length` to the audio side too (they exist in both TextKwargs and AudioKwargs), where they
# mean something else entirely; here each name reaches exactly one component.
TEXT_OPTIONS = frozenset(
    {
        "padding", "truncation", "max_length", "pad_to_multiple_of", "padding_side", "add_special_tokens",
        "return_token_type_ids", "return_attention_mask", "return_length", "return_special_tokens_mask",
        "return_offsets_mapping", "return_overflowing_tokens", "stride", "verbose",
    }
)
AUDIO_OPTIONS = frozenset({"sampling_rate", "training", "max_train_chunks", "generator"})


class AtrProcessor(ProcessorMixin):
    r"""
    Wraps an [`AtrFeatureExtractor`] and a tokenizer: `processor(audio=..., text=..., sampling_rate=...,
    return_tensors="pt")` returns one `BatchFeature` that `AtrModel(**batch)` accepts.

    Text options (`padding`, `truncation`, `max_length`, ... or `text_kwargs={...}`) reach only the tokenizer;
    audio options (`sampling_rate`, `training`, `max_train_chunks`, `generator` or `audio_kwargs={...}`) reach only
    the feature extractor. Captions are padded and truncated to the tokenizer's `model_max_length` by default.
    """

    def __init__(self, feature_extractor: "AtrFeatureExtractor", tokenizer: PreTrainedTokenizerBase):
        super().__init__(feature_extractor, tokenizer)

    @classmethod
    def from_pretrained_backbones(cls, audio: str | os.PathLike, text: str | os.PathLike, audio_config: PreTrainedConfig | None = None) -> "AtrProcessor":
        """The audio checkpoint's own preprocessing (mel scale, range, rate) chunked by atr, and the text checkpoint's tokenizer.

        The window follows `audio_config` where it sets one (Whisper's `max_source_positions`, which
        `audio_config_overrides` may change).
        """
        from transformers import AutoTokenizer

        from .feature_extraction_atr import AtrFeatureExtractor

        return cls(AtrFeatureExtractor.from_pretrained_backbone(audio, audio_config=audio_config), AutoTokenizer.from_pretrained(text))

    def __call__(self, text=None, audio=None, return_tensors=None, text_kwargs=None, audio_kwargs=None, **kwargs):
        """Tokenize `text` (a caption or a list) and/or chunk and featurise `audio` (a clip or a list) into one batch."""
        if text is None and audio is None:
            raise ValueError("AtrProcessor needs text=, audio= or both")
        unknown = sorted(set(kwargs) - TEXT_OPTIONS - AUDIO_OPTIONS)
        if unknown:
            raise TypeError(
                f"AtrProcessor got unknown keyword arguments {unknown}: pass tokenizer options in text_kwargs={{...}} "
                "and feature-extractor options in audio_kwargs={...}"
            )
        text_options = {"padding": True, "truncation": True}
        text_options.update({k: v for k, v in kwargs.items() if k in TEXT_OPTIONS})
        text_options.update(text_kwargs or {})
        audio_options = {k: v for k, v in kwargs.items() if k in AUDIO_OPTIONS}
        audio_options.update(audio_kwargs or {})

        data = {}
        if text is not None:
            data.update(self.tokenizer(self._check_captions(text), return_tensors=return_tensors, **text_options))
        if audio is not None:
            data.update(self.feature_extractor(audio, return_tensors=return_tensors, **audio_options))
        return BatchFeature(data)

    @staticmethod
    def _check_captions(text):
        """Captions as given, after refusing empty or non-string ones (the tokenizer would embed them silently)."""
        captions = [text] if isinstance(text, str) else list(text)
        if not captions:
            raise ValueError("text is an empty list: pass at least one caption")
        for index, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(f"text at index {index} is a {type(caption).__name__}, expected a caption string")
            if not caption.strip():
                raise ValueError(f"text at index {index} is an empty caption: drop it or pass some words")
        return text


__all__ = ["AtrProcessor"]
