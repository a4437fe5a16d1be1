"""ONNX export + AtrOnnxModel: the same embeddings as AtrModel, and AudioIndex / evaluation take either model."""

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny import tiny_atr_config, tiny_tokenizer

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from atr import AtrFeatureExtractor, AtrModel, AtrProcessor  # noqa: E402
from atr.export import export_onnx, main as export_main  # noqa: E402
from atr.onnx import AtrOnnxModel  # noqa: E402
from atr.search import AudioIndex  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CAPTIONS = ["a dog bark", "rain then a loud siren far", "bell", "the engine sound of this is near"]
CHUNK_COUNTS = [1, 5, 2]  # one batch: clips of 1 and 5 chunks, and padding chunks for all but the longest


def clips_of(processor, counts, seed=0):
    """Amplitude-modulated tones in noise (never silent, each its own pitch) filling exactly `counts` chunks."""
    rng = np.random.default_rng(seed)
    window, rate = processor.feature_extractor.window_samples, processor.feature_extractor.sampling_rate
    clips = []
    for count in counts:
        t = np.arange(int(window * (count - 0.5))) / rate
        tone = np.sin(2 * np.pi * rng.uniform(100, 0.4 * rate) * t) * (1 + np.sin(2 * np.pi * rng.uniform(0.5, 4) * t))
        clips.append((0.3 * tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32))
    return clips


@pytest.fixture(scope="module", params=[("clap", "roberta"), ("whisper", "bert")], ids=["htsat-roberta", "whisper-bert"])
def exported(request, tmp_path_factory):
    """(AtrModel, processor, export folder) for a tiny random model; the HTSAT one goes through the CLI with --int8."""
    audio, text = request.param
    torch.manual_seed(0)
    config = tiny_atr_config(audio=audio, text=text)
    overrides = {"sampling_rate": 8000, "window_s": 1.0, "frequency_max": 4000} if audio == "clap" else {}
    processor = AtrProcessor(AtrFeatureExtractor.from_audio_config(config.audio_config, **overrides), tiny_tokenizer())
    model = AtrModel(config).eval()
    out = tmp_path_factory.mktemp("onnx") / "export"
    if audio == "clap":
        source = tmp_path_factory.mktemp("model")
        model.save_pretrained(source)
        processor.save_pretrained(source)
        export_main(["onnx", str(source), str(out), "--int8"])
    else:
        export_onnx(model, processor, out)
    return model, processor, out


def cosines(a, b):
    return torch.nn.functional.cosine_similarity(torch.as_tensor(a), torch.as_tensor(b), dim=-1)


@pytest.mark.parametrize("return_tensors", ["np", "pt"])
def test_onnx_embeddings_equal_pytorch(exported, return_tensors):
    model, processor, out = exported
    onnx_model = AtrOnnxModel.from_pretrained(out)
    rate = processor.feature_extractor.sampling_rate
    audio = processor(audio=clips_of(processor, CHUNK_COUNTS), sampling_rate=rate, return_tensors=return_tensors)
    assert np.asarray(audio["chunk_mask"]).sum(1).tolist() == CHUNK_COUNTS
    text = processor(text=CAPTIONS, return_tensors=return_tensors)
    got_audio = onnx_model.get_audio_features(**audio)  # every field the processor gives, as the embedding loop passes them
    got_text = onnx_model.get_text_features(**text)
    with torch.no_grad():
        want_audio = model.get_audio_features(**{k: torch.as_tensor(v) for k, v in audio.items()})
        want_text = model.get_text_features(**{k: torch.as_tensor(v) for k, v in text.items()})
    assert cosines(got_audio.pooler_output, want_audio.pooler_output).min() >= 0.9999
    assert cosines(got_text.pooler_output, want_text.pooler_output).min() >= 0.9999
    torch.testing.assert_close(got_audio.chunk_weights, want_audio.chunk_weights, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(got_audio.last_hidden_state, want_audio.last_hidden_state, atol=1e-4, rtol=1e-3)
    assert got_audio.pooler_output.shape == (len(CHUNK_COUNTS), model.config.projection_dim)


def test_audio_index_with_onnx_returns_the_same_top10(exported, tmp_path):
    model, processor, out = exported
    rate = processor.feature_extractor.sampling_rate
    folder = tmp_path / "audio"
    folder.mkdir()
    for i, clip in enumerate(clips_of(processor, [1, 2, 3, 1, 2, 1, 3, 1, 2, 1, 1, 2, 1, 4], seed=3)):
        sf.write(folder / f"clip{i:02d}.wav", clip, rate)
    queries = CAPTIONS + ["knock", "a bird while rain"]
    hits = {}
    for name, embedder in (("torch", model), ("onnx", AtrOnnxModel.from_pretrained(out))):
        index = AudioIndex.build(embedder, processor, folder, tmp_path / name, batch_size=4, progress=False)
        hits[name] = [[hit.index for hit in row] for row in index.search(queries, k=10)]
    assert hits["onnx"] == hits["torch"]


def test_int8_graphs_load_and_stay_close(exported):
    model, processor, out = exported
    if not (out / "audio.int8.onnx").exists():
        with pytest.raises(ValueError, match="no int8 graphs"):
            AtrOnnxModel.from_pretrained(out, int8=True)
        return
    quantized = AtrOnnxModel.from_pretrained(out, int8=True)
    text = processor(text=CAPTIONS, return_tensors="np")
    with torch.no_grad():
        want = model.get_text_features(**{k: torch.as_tensor(v) for k, v in text.items()}).pooler_output
    assert cosines(quantized.get_text_features(**text).pooler_output, want).min() > 0.9  # the metric cost is in BENCHMARKS.md


def test_int8_text_weights_get_one_scale_per_output_channel(exported):
    """One int8 scale per text weight tensor cost 0.036 of t2a mAP@10 on the demo model, one per channel 0.007 (BENCHMARKS.md)."""
    import onnx

    _, _, out = exported
    if not (out / "text.int8.onnx").exists():
        pytest.skip("this export was written without --int8")

    def weight_scale_sizes(name):
        graph = onnx.load(out / name).graph
        sizes = {init.name: int(np.prod(init.dims)) for init in graph.initializer}
        # MatMulInteger(A, B, a_zero_point, b_zero_point): B is the int8 weight, its zero point has one entry per scale
        return [sizes[node.input[3]] for node in graph.node if node.op_type == "MatMulInteger" and node.input[3] in sizes]

    text_sizes, audio_sizes = weight_scale_sizes("text.int8.onnx"), weight_scale_sizes("audio.int8.onnx")
    assert text_sizes and min(text_sizes) > 1
    assert audio_sizes and max(audio_sizes) == 1  # the audio tower lost nothing at one scale per tensor: kept, it is faster


def test_export_refuses_to_overwrite_and_loading_needs_an_export(exported, tmp_path):
    model, processor, out = exported
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(model, processor, out)
    with pytest.raises(ValueError, match="atr.export onnx"):
        AtrOnnxModel.from_pretrained(tmp_path)


def test_evaluation_with_the_onnx_backend_embeds_as_pytorch(exported, tmp_path):
    import datasets

    from atr import evaluation, loading
    from atr.collator import AtrCollator
    from atr.embedding import embed_dataset

    model, processor, out = exported
    rate = processor.feature_extractor.sampling_rate
    paths = []
    for i, clip in enumerate(clips_of(processor, [1, 2, 1, 3, 1, 2], seed=5)):
        paths.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(paths[-1], clip, rate)
    dataset = datasets.Dataset.from_dict({"audio": paths, "captions": [[c] for c in CAPTIONS + CAPTIONS[:2]]})
    onnx_model, onnx_processor, info = loading.load_model(str(out), backend="onnx")
    assert info["backend"] == "onnx"
    record = evaluation.evaluate_retrieval(onnx_model, onnx_processor, dataset, [None], progress=False)[0]
    assert 0.0 <= record["metrics"]["t2a_mAP10"] <= 1.0 and len(record["per_query"]["t2a"]["rank"]) == len(dataset)
    # The evaluation's own embedding path (collator, batching by chunk count) gives PyTorch's embeddings. Ranks are not
    # compared: a tiny random model's similarities lie within 1e-5 of each other, below the allowed 1e-4 cosine error.
    got = embed_dataset(onnx_model, AtrCollator(onnx_processor, training=False), dataset, batch_size=4, progress=False)
    want = embed_dataset(model, AtrCollator(processor, training=False), dataset, batch_size=4, progress=False)
    assert cosines(got.audio, want.audio).min() >= 0.9999 and cosines(got.text, want.text).min() >= 0.9999
    with pytest.raises(ValueError, match="atr.export onnx"):
        loading.load_model(str(tmp_path), backend="onnx")
