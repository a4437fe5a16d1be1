"""AtrFeatureExtractor: silence-aware chunking on constructed signals, backbone-feature parity, input edge cases."""

import json

import numpy as np
import pytest
from tiny import tiny_clap_audio_config, tiny_whisper_config
from transformers import ClapAudioConfig, ClapFeatureExtractor, WhisperConfig, WhisperFeatureExtractor

from atr import AtrFeatureExtractor

SR = 48_000
FRAME_S = 0.02  # the extractor's default silence_frame_s: boundaries are exact to within one such frame


def tone(seconds, sr=SR, freq=440.0, amplitude=0.5):
    """A sine tone, float32."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds, sr=SR):
    """Digital silence, float32."""
    return np.zeros(int(round(seconds * sr)), dtype=np.float32)


def seconds(bounds, sr=SR):
    """Sample ranges to seconds."""
    return np.asarray(bounds, dtype=np.float64) / sr


@pytest.fixture(scope="module")
def fe():
    """The full-size CLAP-matching extractor (48 kHz, 64 mels, 10 s chunks)."""
    return AtrFeatureExtractor()


# --- 1. chunking on constructed signals ---------------------------------------------------------------------------


def test_long_silence_is_dropped_with_margins(fe):
    clip = np.concatenate([tone(3), silence(2), tone(3)])
    bounds = seconds(fe.split_on_silence(clip))
    margin = fe.silence_margin_s
    assert bounds.shape == (2, 2)
    np.testing.assert_allclose(bounds, [[0, 3 + margin], [5 - margin, 8]], atol=FRAME_S)
    out = fe(clip, sampling_rate=SR)
    assert out["chunk_mask"].tolist() == [[1]]  # 6.2 s of sound fit one 10 s chunk, which lists both stretches
    np.testing.assert_allclose(out["chunk_spans"][0, 0], [[0, 3 + margin], [5 - margin, 8]], atol=FRAME_S)


def test_without_margin_boundaries_match_construction():
    fe = AtrFeatureExtractor(silence_margin_s=0.0)
    clip = np.concatenate([silence(1.5), tone(3), silence(2), tone(2.5), silence(1.2)])
    np.testing.assert_allclose(seconds(fe.split_on_silence(clip)), [[1.5, 4.5], [6.5, 9.0]], atol=FRAME_S)


def test_short_pause_is_kept(fe):
    clip = np.concatenate([tone(3), silence(0.5), tone(3)])
    np.testing.assert_allclose(seconds(fe.split_on_silence(clip)), [[0, 6.5]], atol=1e-9)


def test_noise_is_not_silence(fe):
    """A tone inside white noise at SNR 5 dB: the noise-only stretches before and after it are kept."""
    rng = np.random.default_rng(0)
    signal = np.concatenate([silence(2.5), tone(3), silence(2.5)])
    noise_power = np.mean(tone(3) ** 2) / 10 ** (5 / 10)
    clip = (signal + rng.normal(0, np.sqrt(noise_power), signal.size)).astype(np.float32)
    np.testing.assert_allclose(seconds(fe.split_on_silence(clip)), [[0, 8]], atol=1e-9)


def test_long_sound_is_cut_into_window_sized_chunks(fe):
    clip = tone(95)
    out = fe(clip, sampling_rate=SR)
    assert out["input_features"].shape == (1, 10, 1, 1001, 64)
    assert out["chunk_mask"].tolist() == [[1] * 10]
    bounds = out["chunk_spans"][0, :, 0].astype(np.float64)  # one stretch per chunk
    lengths = bounds[:, 1] - bounds[:, 0]
    assert (lengths <= 10 + 1e-6).all() and (lengths > 9).all()
    np.testing.assert_allclose(bounds[0, 0], 0)
    np.testing.assert_allclose(bounds[-1, 1], 95, rtol=1e-6)
    np.testing.assert_allclose(bounds[1:, 0], bounds[:-1, 1])  # contiguous: nothing lost, nothing repeated


# --- 2. per-chunk features are the backbone's own ----------------------------------------------------------------


@pytest.mark.parametrize("duration", [7.0, 10.0, 0.3])
def test_clap_features_equal_clap_feature_extractor(fe, duration):
    rng = np.random.default_rng(1)
    clip = (tone(duration) + rng.normal(0, 0.05, int(duration * SR))).astype(np.float32)
    ours = fe(clip, sampling_rate=SR)["input_features"]
    reference = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")(clip, sampling_rate=SR)
    assert ours.shape == (1, 1, 1, 1001, 64)
    assert np.array_equal(ours[0, 0], np.asarray(reference["input_features"][0]))


def test_whisper_features_equal_whisper_feature_extractor():
    sr = 16_000
    rng = np.random.default_rng(2)
    clip = (tone(7, sr) + rng.normal(0, 0.05, 7 * sr)).astype(np.float32)
    ours = AtrFeatureExtractor(backbone="whisper")(clip, sampling_rate=sr)["input_features"]
    reference = WhisperFeatureExtractor()(clip, sampling_rate=sr)["input_features"]
    assert ours.shape == (1, 1, 80, 3000)
    assert np.array_equal(ours[0, 0], reference[0])
    # a tiny config with 10 s windows: 100 frames of hop 1600
    tiny = AtrFeatureExtractor.from_audio_config(tiny_whisper_config(), window_s=10)
    reference = WhisperFeatureExtractor(hop_length=1600, chunk_length=10)(clip, sampling_rate=sr)["input_features"]
    assert np.array_equal(tiny(clip, sampling_rate=sr)["input_features"][0, 0], reference[0])


# --- 3. edge cases ----------------------------------------------------------------------------------------------


def test_all_silent_clip_keeps_one_chunk(fe):
    out = fe([silence(25), tone(1)], sampling_rate=SR)
    assert out["chunk_mask"].tolist() == [[1], [1]]
    np.testing.assert_allclose(out["chunk_spans"][0, 0], [[0, 10]])
    assert np.isfinite(out["input_features"]).all()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(0, dtype=np.float32), "audio at index 1 is empty"),
        (np.array([0.1, np.nan, 0.2] * 1000, dtype=np.float32), "audio at index 1 has NaN or Inf at sample 1"),
        (np.array([0.1, 0.2, np.inf] * 1000, dtype=np.float32), "audio at index 1 has NaN or Inf at sample 2"),
    ],
)
def test_bad_clips_name_their_index(fe, bad, message):
    with pytest.raises(ValueError, match=message):
        fe([tone(1), bad], sampling_rate=SR)


def test_nan_error_says_what_to_do(fe):
    with pytest.raises(ValueError, match="nan_to_num"):
        fe(np.full(100, np.nan, dtype=np.float32), sampling_rate=SR)


def test_int16_is_scaled_to_unit_range(fe):
    pcm = (tone(2) * 32767).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768
    assert np.array_equal(fe(pcm, sampling_rate=SR)["input_features"], fe(as_float, sampling_rate=SR)["input_features"])
    pcm32 = pcm.astype(np.int32) << 16
    assert np.array_equal(fe(pcm32, sampling_rate=SR)["input_features"], fe(as_float, sampling_rate=SR)["input_features"])


def test_stereo_is_mixed_down(fe):
    left, right = tone(2, freq=440), tone(2, freq=660)
    stereo = np.stack([left, right])
    mono = (left + right) / 2
    assert np.array_equal(fe([stereo], sampling_rate=SR)["input_features"], fe(mono, sampling_rate=SR)["input_features"])
    with pytest.raises(ValueError, match=r"audio at index 0 has shape \(96000, 2\).*transpose"):
        fe([stereo.T], sampling_rate=SR)


def test_a_2d_array_is_a_batch_of_clips(fe):
    """transformers' convention (ClapFeatureExtractor): a 2-D array holds equal-length clips, not channels."""
    clips = np.stack([tone(2, freq=440), tone(2, freq=660), tone(2, freq=880)])
    out = fe(clips, sampling_rate=SR)
    assert out["chunk_mask"].shape == (3, 1)
    assert np.array_equal(out["input_features"], fe(list(clips), sampling_rate=SR)["input_features"])


def test_wrong_or_missing_sampling_rate(fe):
    with pytest.raises(ValueError, match="sampling rate 44100, expected 48000: resample"):
        fe(tone(1), sampling_rate=44_100)
    with pytest.raises(ValueError, match="sampling_rate is required"):
        fe(tone(1))


def test_mixed_lengths_up_to_an_hour():
    """0.1 s to 1 h in one batch (Whisper-tiny at 16 kHz with 10 s windows keeps this light)."""
    sr = 16_000
    fe = AtrFeatureExtractor.from_audio_config(tiny_whisper_config(), window_s=10)
    minute = np.concatenate([tone(25, sr), silence(5, sr), tone(28, sr), silence(2, sr)])  # 53 s of sound a minute
    hour = np.tile(minute, 60)
    out = fe([tone(0.1, sr), hour, tone(25, sr)], sampling_rate=sr)
    mask = out["chunk_mask"]
    assert mask.sum(axis=1).tolist() == [1, 60 * (3 + 3), 3]
    assert out["input_features"].shape == (3, 360, 80, 100)
    assert not out["input_features"][0, 1:].any() and (out["chunk_spans"][0, 1:] == -1).all()  # padding chunks
    spans = out["chunk_spans"][1].reshape(-1, 2)
    kept = np.diff(spans[spans[:, 0] >= 0], axis=1).sum()
    # both silences lose all but a 0.1 s margin at each edge; the clip's final 2 s keep none
    np.testing.assert_allclose(kept, 60 * (53 + 4 * 0.1) - 2 * 0.1, atol=60 * 2 * FRAME_S)


# --- 4. determinism, training sampling ------------------------------------------------------------------------


def test_inference_is_deterministic(fe):
    rng = np.random.default_rng(3)
    clip = (tone(12) + rng.normal(0, 0.1, 12 * SR)).astype(np.float32)
    first = fe([clip, clip], sampling_rate=SR)["input_features"]
    second = fe(clip, sampling_rate=SR)["input_features"]
    assert np.array_equal(first[0], first[1]) and np.array_equal(first[:1], second)


def test_training_caps_chunks_with_a_seed():
    fe = AtrFeatureExtractor.from_audio_config(tiny_clap_audio_config(), max_train_chunks=3)
    clip = tone(95)
    everything = fe(clip, sampling_rate=SR)["chunk_spans"][0, :, 0]
    assert len(everything) == 10  # the cap applies to training only
    draws = [fe(clip, sampling_rate=SR, training=True, generator=seed)["chunk_spans"][0, :, 0] for seed in (0, 0, 1)]
    assert draws[0].shape == (3, 2) and np.array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])
    assert all(any(np.array_equal(row, full) for full in everything) for row in draws[2])
    assert (np.diff(draws[2][:, 0]) > 0).all()  # kept in time order
    rng = np.random.default_rng(7)
    assert fe(clip, sampling_rate=SR, training=True, generator=rng, max_train_chunks=5)["chunk_mask"].sum() == 5


# --- configuration ----------------------------------------------------------------------------------------------


def test_from_audio_config_matches_backbones():
    full = AtrFeatureExtractor.from_audio_config(ClapAudioConfig())
    assert (full.hop_length, full.chunk_feature_shape) == (480, (1, 1001, 64))
    tiny = AtrFeatureExtractor.from_audio_config(tiny_clap_audio_config())
    assert tiny.chunk_feature_shape[1] <= 64 * (64 // 16) and tiny.feature_size == 16
    assert tiny(tone(1), sampling_rate=SR)["input_features"].shape == (1, 1, *tiny.chunk_feature_shape)
    whisper = AtrFeatureExtractor.from_audio_config(WhisperConfig())
    assert (whisper.hop_length, whisper.window_s, whisper.chunk_feature_shape) == (160, 30.0, (80, 3000))
    short = AtrFeatureExtractor.from_audio_config(WhisperConfig(max_source_positions=500), window_s=10)
    assert (short.hop_length, short.chunk_feature_shape) == (160, (80, 1000))
    assert AtrFeatureExtractor.from_audio_config(tiny_whisper_config()).chunk_feature_shape == (80, 100)
    with pytest.raises(ValueError, match="2\\*max_source_positions=100 whole frames"):
        AtrFeatureExtractor.from_audio_config(tiny_whisper_config(), window_s=0.001)


def test_save_and_reload(tmp_path):
    fe = AtrFeatureExtractor.from_audio_config(tiny_clap_audio_config(), min_silence_s=0.5, silence_floor_db=-70)
    fe.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["silence_floor_db"] == -70 and not any(isinstance(v, list) and len(v) > 8 for v in saved.values())
    reloaded = AtrFeatureExtractor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == fe.to_dict()
    clip = np.concatenate([tone(2), silence(0.8), tone(2)])
    assert np.array_equal(reloaded(clip, sampling_rate=SR)["input_features"], fe(clip, sampling_rate=SR)["input_features"])
