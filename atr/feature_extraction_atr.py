"""AtrFeatureExtractor: silence-aware chunking of long audio, then the audio backbone's own features per chunk."""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from transformers import ClapFeatureExtractor, WhisperFeatureExtractor
from transformers.audio_utils import power_to_db, window_function
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

logger = logging.get_logger(__name__)
# Per-backbone defaults: those of the backbone's own feature extractor, so pretrained encoders see their features.
BACKBONE_DEFAULTS = {
    "clap": {"sampling_rate": 48_000, "feature_size": 64, "hop_length": 480, "n_fft": 1024, "window_s": 10.0},
    "whisper": {"sampling_rate": 16_000, "feature_size": 80, "hop_length": 160, "n_fft": 400, "window_s": 30.0},
}
_ENERGY_EPS = 1e-20  # a digitally silent frame's energy is 0: this keeps its dB finite (-200 dB, far below any floor)


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


class AtrFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Cuts each clip into encoder-sized chunks after dropping long silences, and computes the audio backbone's features
    per chunk (`ClapFeatureExtractor` for HTSAT, `WhisperFeatureExtractor` for Whisper).

    Args:
        backbone: `"clap"` (HTSAT) or `"whisper"`; picks the per-chunk features and the defaults below.
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
        self, backbone="clap", sampling_rate=None, feature_size=None, window_s=None, hop_length=None, n_fft=None,
        frequency_min=0.0, frequency_max=14_000.0, truncation="rand_trunc", silence_frame_s=0.02, silence_threshold_db=60.0,
        silence_floor_db=-80.0, min_silence_s=1.0, silence_margin_s=0.1, max_train_chunks=None, feature_batch_size=32,
        padding_value=0.0, **kwargs,
    ):
        if backbone not in BACKBONE_DEFAULTS:
            raise ValueError(f"backbone is {backbone!r}, expected one of {tuple(BACKBONE_DEFAULTS)}")
        defaults = BACKBONE_DEFAULTS[backbone]
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
        if truncation not in ("rand_trunc", "fusion"):
            raise ValueError(f"truncation is {truncation!r}, expected 'rand_trunc' (unfused CLAP) or 'fusion' (fused CLAP)")
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
        self._backbone_extractor = self._build_backbone_extractor()

    def _build_backbone_extractor(self):
        """The backbone's own feature extractor for one chunk (never serialised: the attributes above rebuild it)."""
        window = self.window_samples
        # An integral chunk_length keeps the backbone's sample counts integers.
        length_s = int(self.window_s) if self.window_s.is_integer() else self.window_s
        if self.backbone == "clap":
            # Truncation only acts on clips longer than the window, which a chunk never is: no random crop remains.
            return _ClapChunkFeatures(
                feature_size=self.feature_size, sampling_rate=self.sampling_rate, hop_length=self.hop_length,
                max_length_s=length_s, fft_window_size=self.n_fft, padding_value=self.padding_value,
                frequency_min=self.frequency_min, frequency_max=self.frequency_max,
                truncation=self.truncation, padding="repeatpad",
            )
        if window % self.hop_length:
            raise ValueError(f"window_s={self.window_s} ({window} samples) is not a multiple of hop_length={self.hop_length}: "
                             "Whisper needs a whole number of frames per window")
        return WhisperFeatureExtractor(
            feature_size=self.feature_size, sampling_rate=self.sampling_rate, hop_length=self.hop_length,
            chunk_length=length_s, n_fft=self.n_fft, padding_value=self.padding_value,
        )

    @property
    def window_samples(self):
        """Chunk length in samples."""
        return int(round(self.window_s * self.sampling_rate))

    @property
    def chunk_feature_shape(self):
        """Shape of one chunk's features: (1 or 4 with fusion, frames, mels) for CLAP, (mels, frames) for Whisper."""
        if self.backbone == "clap":
            return (4 if self.truncation == "fusion" else 1, self.window_samples // self.hop_length + 1, self.feature_size)
        return (self.feature_size, self.window_samples // self.hop_length)

    @property
    def frames_per_chunk(self):
        """Feature frames in one chunk: the last axis of `audio_attention_mask`."""
        shape = self.chunk_feature_shape
        return shape[1] if self.backbone == "clap" else shape[-1]

    @classmethod
    def from_audio_config(cls, audio_config, **overrides):
        """Build the extractor matching an audio backbone config (`ClapAudioConfig`, `WhisperConfig` or an `AtrConfig`)."""
        audio_config = getattr(audio_config, "audio_config", None) or audio_config
        model_type = getattr(audio_config, "model_type", None)
        if model_type == "clap_audio_model":
            kwargs = dict(backbone="clap", feature_size=audio_config.num_mel_bins)
            kwargs.update(overrides)
            sampling_rate = kwargs.get("sampling_rate") or BACKBONE_DEFAULTS["clap"]["sampling_rate"]
            window = int(round((kwargs.get("window_s") or BACKBONE_DEFAULTS["clap"]["window_s"]) * sampling_rate))
            # HTSAT folds the mel into a spec_size x spec_size image: more frames than fit would be cut off.
            max_frames = audio_config.spec_size * (audio_config.spec_size // audio_config.num_mel_bins)
            if "hop_length" not in kwargs:
                hop = sampling_rate // 100
                if window // hop + 1 > max_frames:
                    hop = math.ceil(window / (max_frames - 1))
                kwargs["hop_length"] = hop
            return cls(**kwargs)
        if model_type == "whisper":
            sampling_rate = overrides.get("sampling_rate") or BACKBONE_DEFAULTS["whisper"]["sampling_rate"]
            frames = 2 * audio_config.max_source_positions
            kwargs = dict(backbone="whisper", feature_size=audio_config.num_mel_bins)
            kwargs.update(overrides)
            if kwargs.get("window_s") is None:
                hop = kwargs.get("hop_length") or BACKBONE_DEFAULTS["whisper"]["hop_length"]
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
            return cls(**kwargs)
        raise ValueError(
            f"audio_config has model_type {model_type!r}: pass a ClapAudioConfig, a WhisperConfig or an AtrConfig"
        )

    @classmethod
    def from_pretrained_backbone(cls, path, **overrides):
        """Build the extractor from a CLAP or Whisper checkpoint's own preprocessor config (mel scale, range, rate, window)."""
        from transformers import AutoFeatureExtractor

        source = AutoFeatureExtractor.from_pretrained(path)
        if isinstance(source, ClapFeatureExtractor):
            kwargs = dict(
                backbone="clap", sampling_rate=source.sampling_rate, feature_size=source.feature_size,
                hop_length=source.hop_length, n_fft=source.fft_window_size, frequency_min=source.frequency_min,
                frequency_max=source.frequency_max, window_s=source.nb_max_samples / source.sampling_rate,
                truncation=source.truncation,
            )
        elif isinstance(source, WhisperFeatureExtractor):
            kwargs = dict(
                backbone="whisper", sampling_rate=source.sampling_rate, feature_size=source.feature_size,
                hop_length=source.hop_length, n_fft=source.n_fft, window_s=source.n_samples / source.sampling_rate,
            )
        else:
            raise ValueError(f"audio backbone {path!r} has a {type(source).__name__}: expected a CLAP or Whisper feature extractor")
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_dict(self):
        """Serialisable attributes (the internal backbone extractor is rebuilt from them)."""
        output = super().to_dict()
        output.pop("_backbone_extractor", None)
        return output

    @staticmethod
    def to_mono_float(audio, index=0):
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

    def split_on_silence(self, audio, index=0):
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

    def chunk_spans(self, audio, index=0):
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
            batch = chunks[i : i + self.feature_batch_size]
            if self.backbone == "clap":
                # CLAP's fusion mode draws from numpy's global RNG even when no chunk is long: keep the caller's stream.
                state = np.random.get_state()
                out = self._backbone_extractor(batch, sampling_rate=self.sampling_rate, max_length=self.window_samples)
                np.random.set_state(state)
                # repeat-padding fills the window with the chunk's own sound: every frame is real
                mask = np.ones((len(batch), self.frames_per_chunk), dtype=np.int64)
            else:
                out = self._backbone_extractor(
                    batch, sampling_rate=self.sampling_rate, max_length=self.window_samples, return_attention_mask=True
                )
                mask = np.asarray(out["attention_mask"], dtype=np.int64)
            features.append(np.asarray(out["input_features"], dtype=np.float32))
            masks.append(mask)
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
