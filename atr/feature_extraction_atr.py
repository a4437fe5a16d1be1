"""AtrFeatureExtractor: silence-aware chunking of long audio, then the audio backbone's own features per chunk."""

import os

import numpy as np
import numpy.typing as npt
from transformers import PreTrainedConfig
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

from .backbones_atr import AUDIO_BACKBONES, DEFAULT_AUDIO_MODEL_TYPE, AudioBackbone, audio_backbone, audio_backbone_named

logger = logging.get_logger(__name__)
_ENERGY_EPS = 1e-20  # a digitally silent frame's energy is 0: this keeps its dB finite (-200 dB, far below any floor)


class AtrFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Cuts each clip into encoder-sized chunks after dropping long silences, and computes the audio backbone's features
    per chunk, as its family's spec in `backbones_atr` says (`ClapFeatureExtractor` for HTSAT, `WhisperFeatureExtractor`
    for Whisper).

    Args:
        backbone: a registered family's name, `"clap"` (HTSAT, the default) or `"whisper"`; picks the per-chunk
            features and the defaults below (the family's `feature_defaults`).
        sampling_rate: audio rate the backbone expects (48000 for CLAP, 16000 for Whisper). Other rates are refused.
        feature_size: mel bins (64 for CLAP, 80 for Whisper).
        window_s: chunk length in seconds, the encoder's window (10 for HTSAT, 30 for Whisper).
        hop_length / n_fft: STFT hop and FFT size in samples.
        frequency_min / frequency_max: mel range in Hz (CLAP only; Whisper's is fixed at 0-8000 Hz).
        truncation: CLAP only, the checkpoint's mode: `"rand_trunc"` (unfused HTSAT: slaney mel, 1 channel) or
            `"fusion"` (fused HTSAT: htk mel, 4 channels); a chunk never exceeds the window, so nothing is cropped.
        silence_frame_s: length of the frames whose energy decides silence (20 ms).
        silence_threshold_db: a frame more than this many dB below the clip's loudest frame is silent (60).
        silence_floor_db: a frame below this absolute level in dBFS is silent (-80), e.g. digital silence.
        min_silence_s: silent stretches longer than this are dropped (1.0 s); shorter pauses are kept.
        silence_margin_s: silence kept at each edge of a dropped stretch next to sound (0.1 s).
        max_train_chunks: with `training=True`, keep at most this many chunks per clip, sampled with the given seed.
        feature_batch_size: chunks featurised at once (bounds memory on hour-long audio).
    """

    model_input_names = ["input_features", "chunk_mask"]

    def __init__(
        self, backbone: str | None = None, sampling_rate: int | None = None, feature_size: int | None = None, window_s: float | None = None,
        hop_length: int | None = None, n_fft: int | None = None, frequency_min: float = 0.0, frequency_max: float = 14_000.0,
        truncation: str = "rand_trunc", silence_frame_s: float = 0.02, silence_threshold_db: float = 60.0, silence_floor_db: float = -80.0,
        min_silence_s: float = 1.0, silence_margin_s: float = 0.1, max_train_chunks: int | None = None, feature_batch_size: int = 32,
        padding_value: float = 0.0, **kwargs,
    ):
        backbone = audio_backbone(DEFAULT_AUDIO_MODEL_TYPE).name if backbone is None else backbone
        defaults = audio_backbone_named(backbone).feature_defaults
        sampling_rate = defaults["sampling_rate"] if sampling_rate is None else int(sampling_rate)
        feature_size = defaults["feature_size"] if feature_size is None else int(feature_size)
        kwargs.setdefault("return_attention_mask", False)
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.backbone = backbone
        self.window_s = float(defaults["window_s"] if window_s is None else window_s)
        self.hop_length = int(defaults["hop_length"] if hop_length is None else hop_length)
        self.n_fft = int(defaults["n_fft"] if n_fft is None else n_fft)
        self.frequency_min = float(frequency_min)
        self.frequency_max = float(frequency_max)
        self.truncation = truncation
        self.silence_frame_s = float(silence_frame_s)
        self.silence_threshold_db = float(silence_threshold_db)
        self.silence_floor_db = float(silence_floor_db)
        self.min_silence_s = float(min_silence_s)
        self.silence_margin_s = float(silence_margin_s)
        self.max_train_chunks = None if max_train_chunks is None else int(max_train_chunks)
        self.feature_batch_size = int(feature_batch_size)
        window = self.window_s * sampling_rate
        if window < 1 or abs(window - round(window)) > 1e-6:
            raise ValueError(f"window_s={self.window_s} is {window} samples at {sampling_rate} Hz: pick a window_s that is a "
                             "whole number of samples")
        self._backbone_extractor = self.spec.chunk_extractor(self)

    @property
    def spec(self) -> AudioBackbone:
        """The backbone family's spec (`backbones_atr`): its per-chunk features and their shape."""
        return audio_backbone_named(self.backbone)

    @property
    def backbone_extractor(self) -> SequenceFeatureExtractor | None:
        """The family's own per-chunk featuriser, rebuilt from this extractor's attributes (never serialised)."""
        return self._backbone_extractor

    @property
    def window_samples(self) -> int:
        """Chunk length in samples."""
        return int(round(self.window_s * self.sampling_rate))

    @property
    def chunk_feature_shape(self) -> tuple[int, ...]:
        """Shape of one chunk's features: (1 or 4 with fusion, frames, mels) for CLAP, (mels, frames) for Whisper."""
        return tuple(self.spec.chunk_feature_shape(self))

    @property
    def frames_per_chunk(self) -> int:
        """Feature frames in one chunk: the last axis of `audio_attention_mask`."""
        return self.chunk_feature_shape[self.spec.frame_axis]

    @classmethod
    def from_audio_config(cls, audio_config: PreTrainedConfig, **overrides) -> "AtrFeatureExtractor":
        """Build the extractor matching an audio backbone config (a registered family's, e.g. `WhisperConfig`, or an `AtrConfig`)."""
        audio_config = getattr(audio_config, "audio_config", None) or audio_config
        return cls(**audio_backbone(getattr(audio_config, "model_type", None)).extractor_kwargs(audio_config, overrides))

    @classmethod
    def from_pretrained_backbone(cls, path: str | os.PathLike, audio_config: PreTrainedConfig | None = None, **overrides) -> "AtrFeatureExtractor":
        """Build the extractor from a checkpoint's own preprocessor config (mel scale, range, rate, window).

        With `audio_config` (the encoder's, after `audio_config_overrides`), a window the config changed (Whisper's
        `max_source_positions`) is followed unless `overrides` sets `window_s`.
        """
        from transformers import AutoFeatureExtractor

        source = AutoFeatureExtractor.from_pretrained(path)
        for spec in AUDIO_BACKBONES.values():
            kwargs = spec.pretrained_extractor_kwargs(source)
            if kwargs is not None:
                break
        else:
            raise ValueError(f"audio backbone {path!r} has a {type(source).__name__}: expected the feature extractor of one of "
                             f"{tuple(spec.name for spec in AUDIO_BACKBONES.values())}")
        kwargs.update(overrides)
        if audio_config is not None and "window_s" not in overrides:
            kwargs.update(spec.pretrained_window(kwargs, audio_config))
        return cls(**kwargs)

    def to_dict(self) -> dict[str, object]:
        """Serialisable attributes (the internal backbone extractor is rebuilt from them)."""
        output = super().to_dict()
        output.pop("_backbone_extractor", None)
        return output

    @staticmethod
    def to_mono_float(audio: npt.ArrayLike, index: int = 0) -> np.ndarray:
        """Validate one clip and return it as 1-D float (int PCM scaled to [-1, 1], (channels, samples) averaged)."""
        audio = np.asarray(audio.detach().cpu() if hasattr(audio, "detach") else audio)
        if audio.dtype.kind == "i":
            audio = audio.astype(np.float32) / float(2 ** (8 * audio.dtype.itemsize - 1))
        elif audio.dtype.kind == "u":
            middle = float(2 ** (8 * audio.dtype.itemsize - 1))
            audio = (audio.astype(np.float32) - middle) / middle
        elif audio.dtype.kind != "f":
            raise ValueError(
                f"audio at index {index} has dtype {audio.dtype}, expected float or integer PCM samples"
            )
        elif audio.dtype.itemsize < 4:
            audio = audio.astype(np.float32)
        if audio.ndim == 2:
            if audio.shape[0] > audio.shape[1]:
                raise ValueError(
                    f"audio at index {index} has shape {audio.shape}, expected (channels, samples): "
                    "transpose it (soundfile returns (samples, channels))"
                )
            audio = audio.mean(axis=0, dtype=audio.dtype)
        elif audio.ndim != 1:
            raise ValueError(
                f"audio at index {index} has shape {audio.shape}, expected (samples,) or (channels, samples)"
            )
        if audio.size == 0:
            raise ValueError(f"audio at index {index} is empty: drop it or pass at least one sample")
        return audio

    def _frame_db(self, audio, index):
        """Energy in dBFS of consecutive non-overlapping frames (the last one may be shorter)."""
        frame = max(1, int(round(self.silence_frame_s * self.sampling_rate)))
        full = audio.size // frame
        blocks = audio[: full * frame].reshape(full, frame)
        # einsum squares and sums without materialising a squared copy of an hour of audio.
        energy = np.einsum("ij,ij->i", blocks, blocks) / frame
        tail = audio[full * frame :]
        if tail.size:
            energy = np.append(energy, np.dot(tail, tail) / tail.size)
        if not np.isfinite(energy).all():
            bad = np.flatnonzero(~np.isfinite(audio))
            if bad.size:
                raise ValueError(
                    f"audio at index {index} has NaN or Inf at sample {bad[0]}: clean it first, e.g. np.nan_to_num"
                )
            # Finite samples too large to square in float32: redo in float64.
            energy = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64) / frame
            if tail.size:
                energy = np.append(energy, np.dot(tail.astype(np.float64), tail) / tail.size)
        return 10.0 * np.log10(energy.astype(np.float64) + _ENERGY_EPS), frame

    def split_on_silence(self, audio: np.ndarray, index: int = 0) -> np.ndarray:
        """Sample ranges (start, end) of one mono clip that survive silence dropping, in order; never empty."""
        db, frame = self._frame_db(audio, index)
        silent = (db < db.max() - self.silence_threshold_db) | (db < self.silence_floor_db)
        if silent.all():  # still embedded, but whoever reads its scores should know
            logger.warning_once("a clip is silent throughout: it is embedded from silence, so its similarities and zero-shot "
                                "scores (a softmax over the labels, e.g. 'speech' 0.99) say nothing about what it holds")
        edges = np.flatnonzero(np.diff(np.concatenate(([0], silent.astype(np.int8), [0]))))
        starts, ends = edges[0::2] * frame, np.minimum(edges[1::2] * frame, audio.size)
        long = (ends - starts) > self.min_silence_s * self.sampling_rate
        starts, ends = starts[long], ends[long]
        margin = int(round(self.silence_margin_s * self.sampling_rate))
        # Silence at the clip's own edges borders no sound, so it needs no margin.
        drop_from = np.where(starts > 0, starts + margin, 0)
        drop_to = np.where(ends < audio.size, ends - margin, audio.size)
        keep_from = np.concatenate(([0], drop_to))
        keep_to = np.concatenate((drop_from, [audio.size]))
        kept = keep_to > keep_from
        segments = np.stack([keep_from[kept], keep_to[kept]], axis=1)
        if len(segments) == 0:  # an all-silent clip still needs one chunk for the model to embed
            segments = np.array([[0, min(audio.size, self.window_samples)]])
        return segments

    def chunk_spans(self, audio: np.ndarray, index: int = 0) -> list[np.ndarray]:
        """The chunks of one mono clip, each an (S, 2) array of the source sample spans (start, end) it holds, in order."""
        window = self.window_samples
        chunks, current, filled = [], [], 0
        for start, end in self.split_on_silence(audio, index):
            length = int(end - start)
            if length > window:
                # Equal pieces rather than full windows plus a sliver: no near-empty chunk dominated by padding.
                if current:
                    chunks.append(current)
                    current, filled = [], 0
                pieces = -(-length // window)
                cuts = start + (np.arange(pieces + 1) * length) // pieces
                chunks.extend([(a, b)] for a, b in zip(cuts[:-1], cuts[1:]))
                continue
            # Short sounds are packed together, so compute follows the duration of sound, not the number of events.
            if filled + length > window:
                chunks.append(current)
                current, filled = [], 0
            current.append((start, end))
            filled += length
        if current:
            chunks.append(current)
        return [np.asarray(spans, dtype=np.int64) for spans in chunks]

    def _featurize(self, chunks):
        """The backbone's features (N, *chunk_feature_shape) float32 and frame mask (N, frames) of a list of 1-D chunks."""
        features, masks = [], []
        for i in range(0, len(chunks), self.feature_batch_size):
            batch_features, batch_mask = self.spec.featurize(self, chunks[i : i + self.feature_batch_size])
            features.append(batch_features)
            masks.append(batch_mask)
        return np.concatenate(features), np.concatenate(masks)

    def __call__(self, raw_audio, sampling_rate=None, return_tensors=None, training=False, max_train_chunks=None, generator=None):
        """
        Chunk and featurise one clip, a 2-D array of equal-length clips (a batch, as in transformers) or a list of clips.

        A clip is a 1-D array; inside a list, a 2-D `(channels, samples)` clip is mixed down to mono. Integer PCM is
        scaled to [-1, 1]. `sampling_rate` is required and must equal the extractor's: resample beforehand (the data
        pipeline does). Returns a `BatchFeature` with `input_features` (B, C_max, *chunk_feature_shape), `chunk_mask`
        (B, C_max) int64, `audio_attention_mask` (B, C_max, frames) int64 (which feature frames are real audio, not
        padding) and `chunk_spans` (B, C_max, S_max, 2): the (start, end) seconds in the original clip of each of the
        up to S_max stretches a chunk holds, -1 where unused; padding chunks are zeros. With `training=True` and
        `max_train_chunks` set, clips with more chunks keep a random subset drawn from `generator` (a
        `np.random.Generator` or a seed).
        """
        if sampling_rate is None:
            raise ValueError(
                f"sampling_rate is required: pass sampling_rate=<your audio's rate> (this extractor expects "
                f"{self.sampling_rate} Hz)"
            )
        if int(sampling_rate) != self.sampling_rate:
            raise ValueError(
                f"audio has sampling rate {sampling_rate}, expected {self.sampling_rate}: resample it first, e.g. "
                f"soxr.resample(audio, {sampling_rate}, {self.sampling_rate}), or load it with atr.data"
            )
        clips = self._as_clip_list(raw_audio)
        cap = self.max_train_chunks if max_train_chunks is None else max_train_chunks
        rng = None
        if training and cap is not None:
            rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)

        chunks, spans = [], []
        for index, clip in enumerate(clips):
            audio = self.to_mono_float(clip, index)
            clip_spans = self.chunk_spans(audio, index)
            if rng is not None and len(clip_spans) > cap:
                clip_spans = [clip_spans[i] for i in np.sort(rng.choice(len(clip_spans), size=cap, replace=False))]
            chunks.extend(np.concatenate([audio[a:b] for a, b in chunk]) for chunk in clip_spans)
            spans.append(clip_spans)

        num_chunks = max(len(s) for s in spans)
        num_spans = max(len(chunk) for s in spans for chunk in s)
        chunk_mask = np.zeros((len(clips), num_chunks), dtype=np.int64)
        chunk_seconds = np.full((len(clips), num_chunks, num_spans, 2), -1.0, dtype=np.float32)
        for index, clip_spans in enumerate(spans):
            chunk_mask[index, : len(clip_spans)] = 1
            for c, chunk in enumerate(clip_spans):
                chunk_seconds[index, c, : len(chunk)] = chunk / self.sampling_rate
        real = chunk_mask.astype(bool)
        chunk_features, chunk_frames = self._featurize(chunks)
        features = np.zeros((len(clips), num_chunks, *self.chunk_feature_shape), dtype=np.float32)
        frame_mask = np.zeros((len(clips), num_chunks, chunk_frames.shape[-1]), dtype=np.int64)
        features[real], frame_mask[real] = chunk_features, chunk_frames
        data = {"input_features": features, "chunk_mask": chunk_mask, "audio_attention_mask": frame_mask, "chunk_spans": chunk_seconds}
        return BatchFeature(data, tensor_type=return_tensors)

    @staticmethod
    def _as_clip_list(raw_audio):
        """A list of clips from one clip, a list of clips or a 2-D numpy batch of equal-length clips."""
        if isinstance(raw_audio, (list, tuple)):
            if len(raw_audio) == 0:
                raise ValueError("raw_audio is an empty list: pass at least one clip")
            if np.isscalar(raw_audio[0]):
                return [np.asarray(raw_audio, dtype=np.float32)]
            return list(raw_audio)
        audio = raw_audio.detach().cpu().numpy() if hasattr(raw_audio, "detach") else np.asarray(raw_audio)
        # transformers' convention: a 2-D array is a batch of clips; multichannel audio goes inside a list
        if audio.ndim == 2 and audio.shape[0] > audio.shape[1]:
            raise ValueError(f"audio has shape {audio.shape}: a 2-D array is a batch of (clips, samples), and this looks like "
                             "(samples, channels) as soundfile returns it: pass [audio.T] for one multichannel clip")
        return list(audio) if audio.ndim == 2 else [audio]


__all__ = ["AtrFeatureExtractor"]
