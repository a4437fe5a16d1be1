"""The method's core as the paper states it: temperature, shortcut-free alignment, token masks, chunk packing, CLAP variants."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from tiny import tiny_atr_config, tiny_clap_audio_config, tiny_roberta_config, tiny_tokenizer, tiny_whisper_config
from transformers import TrainingArguments

from atr import AtrFeatureExtractor, AtrModel
from atr.layers_atr import AtrCrossModalAttention
from atr.trainer import AtrTrainer

SR = 16_000


def make_model(audio="clap", **overrides):
    torch.manual_seed(0)
    return AtrModel(tiny_atr_config(audio, "roberta", **overrides))


def beep(seconds, sr=SR, freq=1000.0):
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


# --- temperature -------------------------------------------------------------------------------------------------


def test_initial_temperature_is_0_07():
    model = make_model()
    assert abs(model.logit_scale.exp().item() - 1 / 0.07) < 1e-4


def test_logit_scale_has_a_gradient_below_the_cap_and_is_clamped_after_the_step(tmp_path):
    model = make_model().train()
    trainer = AtrTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(99.0))
    ids = torch.randint(5, 99, (4, 6))
    features = torch.randn(4, 1, 1, 64, 16)
    model(input_ids=ids, input_features=features, return_loss=True).loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().item() > 0
    with torch.no_grad():
        model.logit_scale.fill_(math.log(150.0))  # what a large step could do
    trainer.callback_handler.on_optimizer_step(trainer.args, trainer.state, trainer.control)
    assert abs(model.logit_scale.exp().item() - 100.0) < 1e-3


def test_logit_scale_and_pooling_query_are_not_weight_decayed(tmp_path):
    model = make_model()
    trainer = AtrTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    decayed = set(trainer.get_decay_parameter_names(model))
    assert "logit_scale" not in decayed and "chunk_pooling.query" not in decayed
    assert "audio_projection.weight" in decayed


# --- shortcut-free alignment -------------------------------------------------------------------------------------


def pair_inputs(model, seed=0):
    """Random pair-embedding inputs: 2 clips (2 and 1 real chunks, 5 head tokens each), captions of 4 and 3 tokens."""
    g = torch.Generator().manual_seed(seed)
    dim, hidden = model.config.projection_dim, model.config.head_hidden_size
    chunk_mask = torch.tensor([[True, True], [True, False]])
    audio_tokens = torch.randn(3, 5, hidden, generator=g)
    audio_token_mask = torch.ones(3, 5, dtype=torch.bool)
    audio_token_mask[2, 3:] = False
    text_values = torch.randn(2, 4, dim, generator=g)
    text_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    chunk_embeds = torch.zeros(2, 2, dim)
    with torch.no_grad():
        chunk_embeds[chunk_mask] = model.audio_projection(audio_tokens.mean(1))
    audio_query, text_query = torch.randn(2, dim, generator=g), torch.randn(2, dim, generator=g)
    return [chunk_embeds, chunk_mask, audio_tokens, audio_token_mask, text_values, text_mask, audio_query, text_query]


def in_convex_hull_per_coordinate(vector, values):
    """Each coordinate lies between the values' min and max: necessary for a per-head convex combination."""
    return bool(((vector >= values.min(0).values - 1e-5) & (vector <= values.max(0).values + 1e-5)).all())


def test_alignment_pairs_are_built_from_their_own_modality_only():
    """a~ mixes only audio values (the caption picks where), t~ only text values: no modality can be copied across."""
    model = make_model().eval()
    inputs = pair_inputs(model)
    pair_audio, pair_text = model.pair_embeddings(*inputs)
    audio_tokens, audio_token_mask, text_values, text_mask = inputs[2], inputs[3], inputs[4], inputs[5]
    with torch.no_grad():
        audio_values = model.audio_projection(audio_tokens)  # the audio side's values in the shared space
    assert in_convex_hull_per_coordinate(pair_audio[0], audio_values[:2].reshape(-1, audio_values.shape[-1]))
    assert in_convex_hull_per_coordinate(pair_audio[1], audio_values[2][audio_token_mask[2]])
    assert in_convex_hull_per_coordinate(pair_text[1], text_values[1][text_mask[1].bool()])

    changed_text = list(inputs)
    changed_text[4] = torch.randn_like(text_values)  # the caption's values change, its query does not
    torch.testing.assert_close(model.pair_embeddings(*changed_text)[0], pair_audio)
    changed_audio = list(inputs)
    changed_audio[2] = torch.randn_like(audio_tokens)  # the recording's values change, its query does not
    torch.testing.assert_close(model.pair_embeddings(*changed_audio)[1], pair_text)
    assert not torch.allclose(model.pair_embeddings(*changed_audio)[0], pair_audio)


def test_attention_over_lazily_projected_tokens_equals_attention_over_the_projected_values():
    """The cached-training shortcut (never projecting every token) gives the attention over the projected values, and its gradients."""
    torch.manual_seed(0)
    attention, projection = AtrCrossModalAttention(16, heads=4), nn.Linear(24, 16)
    query, tokens = torch.randn(3, 16), torch.randn(3, 7, 24, requires_grad=True)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    lazy = attention(query, tokens, mask, value_projection=projection)
    reference = attention(query, projection(tokens), mask)
    torch.testing.assert_close(lazy, reference, rtol=1e-5, atol=1e-5)
    lazy_grads = torch.autograd.grad(lazy.square().sum(), [tokens, projection.weight, attention.key.weight])
    reference_grads = torch.autograd.grad(reference.square().sum(), [tokens, projection.weight, attention.key.weight])
    for got, expected in zip(lazy_grads, reference_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# --- token masks and chunk packing -------------------------------------------------------------------------------


def test_whisper_padding_tokens_are_masked_out_of_pooling():
    """A 0.3 s clip in a 1 s window: 15 of 50 tokens are real, and the padded ones cannot change its embedding."""
    model = make_model("whisper").eval()
    fe = AtrFeatureExtractor.from_audio_config(model.config.audio_config)
    batch = fe(beep(0.3), sampling_rate=SR, return_tensors="pt")
    assert batch["audio_attention_mask"].shape == (1, 1, 100) and batch["audio_attention_mask"].sum() == 30
    _, token_mask = model.audio_model(batch["input_features"][0], batch["audio_attention_mask"][0])
    assert token_mask.shape == (1, 50) and token_mask.sum() == 15
    with torch.no_grad():
        reference = model.get_audio_features(**batch).pooler_output

        def scramble_padding(module, args, output):
            output.last_hidden_state[:, 15:] = torch.randn_like(output.last_hidden_state[:, 15:]) * 10

        handle = model.audio_model.encoder.register_forward_hook(scramble_padding)
        scrambled = model.get_audio_features(**batch).pooler_output
        handle.remove()
        unmasked = model.get_audio_features(input_features=batch["input_features"]).pooler_output
    torch.testing.assert_close(scrambled, reference)
    assert not torch.allclose(unmasked, reference)  # without the mask the padding would have counted


def test_six_short_beeps_are_packed_into_one_chunk_with_their_spans():
    fe = AtrFeatureExtractor.from_audio_config(tiny_whisper_config(), window_s=10)
    audio = np.zeros(30 * SR, dtype=np.float32)
    onsets = [2.0 + 4.5 * k for k in range(6)]
    for onset in onsets:
        audio[int(onset * SR) : int(onset * SR) + int(0.3 * SR)] = beep(0.3)
    out = fe(audio, sampling_rate=SR)
    assert out["chunk_mask"].tolist() == [[1]]
    spans = out["chunk_spans"][0, 0]
    assert spans.shape == (6, 2)
    margin = fe.silence_margin_s
    np.testing.assert_allclose(spans[:, 0], np.array(onsets) - margin, atol=0.02 + 1e-6)
    np.testing.assert_allclose(spans[:, 1], np.array(onsets) + 0.3 + margin, atol=0.02 + 1e-6)


def test_continuous_noise_of_95_s_is_10_chunks():
    fe = AtrFeatureExtractor.from_audio_config(tiny_whisper_config(), window_s=10)
    noise = np.random.default_rng(0).normal(0, 0.1, 95 * SR).astype(np.float32)
    out = fe(noise, sampling_rate=SR)
    assert out["chunk_mask"].tolist() == [[1] * 10]
    spans = out["chunk_spans"][0, :, 0]  # one span each
    np.testing.assert_allclose(spans[1:, 0], spans[:-1, 1])
    np.testing.assert_allclose([spans[0, 0], spans[-1, 1]], [0, 95], atol=1e-4)


# --- CLAP variants -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
def test_fused_and_unfused_clap_backbones_load_and_embed(tmp_path, fused):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaModel

    torch.manual_seed(0)
    audio_config = tiny_clap_audio_config()
    audio_config.enable_fusion = fused
    ClapModel(ClapConfig(audio_config=audio_config.to_dict(), text_config=tiny_roberta_config().to_dict(), projection_dim=16)).save_pretrained(tmp_path / "clap")
    saved = ClapFeatureExtractor(
        feature_size=16, sampling_rate=SR, hop_length=160, max_length_s=2, fft_window_size=400, frequency_min=50,
        frequency_max=7000, truncation="fusion" if fused else "rand_trunc", padding="repeatpad",
    )
    saved.save_pretrained(tmp_path / "clap")
    RobertaModel(tiny_roberta_config()).save_pretrained(tmp_path / "roberta")
    tiny_tokenizer().save_pretrained(tmp_path / "roberta")

    model, processor = AtrModel.from_pretrained_backbones(
        audio=str(tmp_path / "clap"), text=str(tmp_path / "roberta"), return_processor=True,
        projection_dim=16, head_hidden_size=32, head_heads=4, cross_modal_heads=4,
    )
    fe = processor.feature_extractor
    assert (fe.sampling_rate, fe.feature_size, fe.hop_length, fe.n_fft, fe.frequency_min, fe.frequency_max, fe.truncation) == (
        saved.sampling_rate, saved.feature_size, saved.hop_length, saved.fft_window_size, saved.frequency_min,
        saved.frequency_max, saved.truncation,
    )
    clip = beep(1.3)
    batch = processor(audio=[clip, beep(3.0)], text=["a beep", "a long beep"], sampling_rate=SR, return_tensors="pt")
    reference = saved(clip, sampling_rate=SR, return_tensors="np")["input_features"][0]
    assert np.array_equal(batch["input_features"][0, 0].numpy(), reference)  # the checkpoint's own features, mel scale included
    with torch.no_grad():
        out = model.eval()(**batch)
    assert out.audio_embeds.shape == (2, 16) and torch.isfinite(out.audio_embeds).all()


def test_a_samples_by_channels_array_is_refused_not_read_as_a_batch():
    fe = AtrFeatureExtractor.from_audio_config(tiny_whisper_config())
    with pytest.raises(ValueError, match=r"\(samples, channels\).*\[audio.T\]"):
        fe(np.zeros((300, 2), dtype=np.float32), sampling_rate=SR)


def test_unknown_keyword_arguments_are_refused_and_transformers_flags_honoured():
    """A typo must not be swallowed; return_dict=False gives a tuple; hidden-state/attention outputs are refused clearly."""
    model = make_model().eval()
    ids = torch.randint(5, 99, (2, 6))
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['input_feature'\\]"):
        model(input_ids=ids, input_feature=torch.randn(2, 1, 1, 64, 16))
    with pytest.raises(TypeError, match="attention_maks"):
        model.get_text_features(input_ids=ids, attention_maks=torch.ones_like(ids))
    with pytest.raises(ValueError, match="get_text_encoder_states"):
        model.get_text_features(input_ids=ids, output_hidden_states=True)
    as_tuple = model.get_text_features(input_ids=ids, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], model.get_text_features(input_ids=ids).pooler_output)


# --- length-grouped batches -----------------------------------------------------------------------------------------


def test_length_grouped_sampler_holds_plain_lengths_and_groups_by_them(tmp_path):
    # datasets 5 returns a lazy Column for dataset["length"]; the sampler indexes it once per item per epoch, and each
    # lookup is an Arrow select (8 s per epoch on the 2,000-clip demo): it must hold a plain list.
    from datasets import Dataset

    lengths = [1, 3, 2, 3, 1, 2, 3, 1] * 8
    dataset = Dataset.from_dict({"clip_index": list(range(len(lengths))), "length": lengths})
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=8,
                             train_sampling_strategy="group_by_length")
    trainer = AtrTrainer(model=make_model(), args=args, train_dataset=dataset)
    sampler = trainer._get_train_sampler()
    assert type(sampler.lengths) is list and sampler.lengths == lengths
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    batches = [[lengths[i] for i in order[start : start + 8]] for start in range(0, len(order), 8)]
    assert sum(len(set(batch)) for batch in batches) < 2.0 * len(batches)  # a shuffled order mixes ~3 lengths per batch
