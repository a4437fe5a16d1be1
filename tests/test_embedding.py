"""atr.embedding: the one loop that embeds clips and captions (order, padding independence, per-chunk outputs)."""

import numpy as np
import pytest
import torch
from tiny import tiny_atr_config, tiny_tokenizer

from atr import AtrFeatureExtractor, AtrModel, AtrProcessor
from atr.collator import AtrCollator
from atr.embedding import embed_clips, embed_dataset, embed_texts, module_fingerprint

RATE = 8000
CHUNK_COUNTS = [5, 1, 3, 1, 5, 2]
CAPTIONS = [["a dog bark"], ["rain", "the bird sound of this is loud then soft"], ["a bell"], ["engine", "knock knock"],
            ["a siren far"], ["beep"]]


@pytest.fixture(scope="module")
def model_and_processor():
    torch.manual_seed(0)
    config = tiny_atr_config(text="bert")
    extractor = AtrFeatureExtractor.from_audio_config(config.audio_config, sampling_rate=RATE, window_s=1.0, frequency_max=4000)
    return AtrModel(config).eval(), AtrProcessor(extractor, tiny_tokenizer())


def noise_clips(counts, seed=0):
    """Noise clips (never silent) that fill exactly `counts` 1 s chunks."""
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(RATE * (count - 0.5)))).astype(np.float32) for count in counts]


def test_clips_come_back_in_order_equal_to_one_at_a_time(model_and_processor):
    model, processor = model_and_processor
    clips = noise_clips(CHUNK_COUNTS)
    embedded = embed_clips(model, processor, clips, batch_size=2)
    assert embedded.embeds.shape == (len(clips), model.config.projection_dim)
    for i, clip in enumerate(clips):
        alone = processor(audio=clip, sampling_rate=RATE, return_tensors="pt")
        with torch.no_grad():
            out = model.get_audio_features(alone["input_features"], alone["chunk_mask"])
        torch.testing.assert_close(embedded.embeds[i], out.pooler_output[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(embedded.chunk_embeds[i], out.last_hidden_state[0], atol=1e-5, rtol=1e-4)
        assert embedded.chunk_weights[i].shape == (CHUNK_COUNTS[i],)
        spans = alone["chunk_spans"][0].numpy()  # (C, S, 2), -1 where unused: each chunk's extent is first start to last end
        np.testing.assert_allclose(embedded.chunk_boundaries[i], np.stack([spans[:, 0, 0], spans[:, :, 1].max(1)], axis=1))


def test_clips_are_batched_with_similar_chunk_counts(model_and_processor, monkeypatch):
    model, processor = model_and_processor
    shapes = []
    real = model.get_audio_features

    def spy(input_features, chunk_mask, **kwargs):
        shapes.append(tuple(chunk_mask.shape))
        return real(input_features, chunk_mask, **kwargs)

    monkeypatch.setattr(model, "get_audio_features", spy)
    embed_clips(model, processor, iter(noise_clips([5, 1, 5, 1])), batch_size=2)  # a lazy iterable is fine
    assert shapes == [(2, 1), (2, 5)]  # not (2, 5) twice, as input order would give


def test_texts_come_back_in_order_equal_to_one_at_a_time(model_and_processor):
    model, processor = model_and_processor
    texts = [caption for captions in CAPTIONS for caption in captions]
    embedded = embed_texts(model, processor, texts, batch_size=3)
    for i, text in enumerate(texts):
        with torch.no_grad():
            alone = model.get_text_features(**processor(text=[text], return_tensors="pt")).pooler_output[0]
        torch.testing.assert_close(embedded[i], alone, atol=1e-5, rtol=1e-4)


def test_dataset_embeds_every_clip_and_caption(model_and_processor):
    model, processor = model_and_processor
    clips = noise_clips(CHUNK_COUNTS, seed=1)
    rows = [{"audio": {"array": clip, "sampling_rate": RATE}, "captions": captions} for clip, captions in zip(clips, CAPTIONS)]
    embedded = embed_dataset(model, AtrCollator(processor, training=False), rows, batch_size=2, progress=False)
    texts = [caption for captions in CAPTIONS for caption in captions]
    torch.testing.assert_close(embedded.audio, embed_clips(model, processor, clips, batch_size=4).embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(embedded.text, embed_texts(model, processor, texts), atol=1e-5, rtol=1e-4)
    assert embedded.caption_to_audio.tolist() == [i for i, captions in enumerate(CAPTIONS) for _ in captions]


def test_fingerprint_follows_the_weights(model_and_processor):
    model, _ = model_and_processor
    copy = AtrModel(model.config).eval()
    copy.load_state_dict(model.state_dict())
    assert module_fingerprint(copy) == module_fingerprint(model)
    with torch.no_grad():
        copy.audio_projection.bias[0] += 1e-3
    assert module_fingerprint(copy) != module_fingerprint(model)
