"""atr's one model loader (`atr.loading.load_model`) and `AtrModel.get_chunk_embeddings`, the per-chunk step export traces."""

import numpy as np
import pytest
import torch

from atr import AtrModel
from atr.loading import load_model
from tests.test_search import model_and_processor, model_dir  # noqa: F401 (fixtures)


def test_load_model_gives_an_atr_folder_its_model_processor_and_protocol(model_dir):
    model, processor, info = load_model(model_dir)
    assert isinstance(model, AtrModel) and not model.training
    assert info["model_type"] == "atr" and type(processor).__name__ == "AtrProcessor"
    with pytest.raises(ValueError, match="backend is 'tf', expected 'auto' or one of"):
        load_model(model_dir, backend="tf")
    with pytest.raises(ValueError, match="needs an ONNX export folder.*python -m atr.export onnx"):
        load_model(model_dir, backend="onnx")


def test_get_chunk_embeddings_are_what_get_audio_features_pools(model_and_processor):
    model, processor = model_and_processor
    rng = np.random.default_rng(0)
    rate = processor.feature_extractor.sampling_rate
    clips = [0.1 * rng.standard_normal(rate * seconds).astype(np.float32) for seconds in (1, 4)]
    batch = processor(audio=clips, sampling_rate=rate, return_tensors="pt")
    real = batch["chunk_mask"].bool()
    assert real.sum() > 2  # several chunks, one clip padded
    frames = batch.get("audio_attention_mask")
    with torch.no_grad():
        pooled = model.get_audio_features(**batch).last_hidden_state
        chunks = model.get_chunk_embeddings(batch["input_features"][real], None if frames is None else frames[real])
    torch.testing.assert_close(chunks, pooled[real], atol=1e-5, rtol=1e-5)
