"""AtrModel behaviour users rely on: shapes, padding invariance, freezing, backbone loading, Hub round trip, learning."""

import subprocess
import sys
import textwrap

import pytest
import torch
from tiny import tiny_atr_config, tiny_features, tiny_roberta_config, tiny_whisper_config, tiny_clap_audio_config

from atr import AtrModel


def make_model(audio="clap", text="roberta", seed=0, **overrides):
    torch.manual_seed(seed)
    return AtrModel(tiny_atr_config(audio, text, **overrides))


def text_inputs(batch, length=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # one padded caption
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("audio,text", [("clap", "roberta"), ("whisper", "bert")])
def test_forward_shapes_norms_and_loss_terms(audio, text):
    model = make_model(audio, text)
    features = tiny_features(model.config, batch=3, chunks=2)
    chunk_mask = torch.tensor([[1, 1], [1, 0], [1, 0]])
    out = model(**text_inputs(3), input_features=features, chunk_mask=chunk_mask, return_loss=True)
    assert out.audio_embeds.shape == out.text_embeds.shape == (3, 16)
    assert out.logits_per_audio.shape == (3, 3) and torch.equal(out.logits_per_text, out.logits_per_audio.t())
    torch.testing.assert_close(out.audio_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(3))
    assert out.chunk_weights.shape == (3, 2) and torch.all(out.chunk_weights[1:, 1] == 0)
    torch.testing.assert_close(out.chunk_weights.sum(-1), torch.ones(3))
    for term in ("loss", "loss_contrastive", "loss_cosine", "loss_l1"):
        assert torch.isfinite(out[term]), term
    expected = out.loss_cosine + out.loss_l1 + out.loss_contrastive  # all lambdas default to 1
    torch.testing.assert_close(out.loss, expected)


def test_text_only_and_audio_only_forward_and_feature_methods():
    model = make_model().eval()
    text = model(**text_inputs(2))
    assert text.loss is None and text.audio_embeds is None and text[0].shape == (2, 16)  # feature-extraction reads [0]
    features = tiny_features(model.config, 2, 1)
    audio = model.get_audio_features(input_features=features)
    torch.testing.assert_close(audio.pooler_output, model(input_features=features).audio_embeds)
    torch.testing.assert_close(model.get_text_features(**text_inputs(2)).pooler_output, text.text_embeds)
    with pytest.raises(ValueError, match="input_features"):
        model()


def test_feature_methods_take_precomputed_encoder_states():
    """Cached encoder states (atr.cache) embed exactly like the raw inputs they were computed from."""
    model = make_model("whisper", "bert").eval()
    features, chunk_mask = tiny_features(model.config, 2, 2), torch.tensor([[1, 1], [1, 0]])
    text = text_inputs(2)
    with torch.no_grad():
        states = torch.zeros(2, 2, *model.get_audio_encoder_states(features[:1, 0]).shape[1:])
        states[chunk_mask.bool()] = model.get_audio_encoder_states(features[chunk_mask.bool()])
        audio = model.get_audio_features(input_features=features, chunk_mask=chunk_mask)
        cached_audio = model.get_audio_features(audio_hidden_states=states, chunk_mask=chunk_mask)
        text_states = model.get_text_encoder_states(text["input_ids"], text["attention_mask"])
        cached_text = model.get_text_features(text_hidden_states=text_states, attention_mask=text["attention_mask"])
    torch.testing.assert_close(cached_audio.pooler_output, audio.pooler_output, atol=1e-6, rtol=0)
    torch.testing.assert_close(cached_text.pooler_output, model.get_text_features(**text).pooler_output, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="either input_features or audio_hidden_states.*not both"):
        model.get_audio_features(input_features=features, audio_hidden_states=states)
    with pytest.raises(ValueError, match="either input_ids or text_hidden_states.*not neither"):
        model.get_text_features()


@pytest.mark.parametrize("audio,pooling", [("clap", "mean"), ("whisper", "mean"), ("whisper", "mean_max")])
def test_padding_chunks_change_nothing(audio, pooling):
    model = make_model(audio, "bert", audio_token_pooling=pooling).eval()
    long_clip = tiny_features(model.config, 1, 3, seed=1)
    short_clip = tiny_features(model.config, 1, 1, seed=2)
    padded = torch.cat([short_clip, torch.randn_like(long_clip[:, :2]) * 100], dim=1)  # garbage in padding chunks
    batch = torch.cat([padded, long_clip])
    with torch.no_grad():
        alone = model.get_audio_features(short_clip).pooler_output[0]
        together = model.get_audio_features(batch, chunk_mask=torch.tensor([[1, 0, 0], [1, 1, 1]])).pooler_output[0]
    assert (alone - together).abs().max() < 1e-5


def test_padding_chunks_are_never_encoded():
    model = make_model().eval()
    seen = []
    model.audio_model.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    model.get_audio_features(tiny_features(model.config, 2, 3), chunk_mask=torch.tensor([[1, 0, 0], [1, 1, 0]]))
    assert sum(seen) == 3


def test_long_audio_is_encoded_in_bounded_minibatches():
    model = make_model(audio_chunk_batch_size=4).eval()
    seen = []
    model.audio_model.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    model.get_audio_features(tiny_features(model.config, 1, 10))
    assert seen == [4, 4, 2]


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_encoders_get_no_gradient_and_stay_in_eval(frozen):
    model = make_model(freeze_audio_encoder=frozen, freeze_text_encoder=frozen, head_dropout=0.1).train()
    assert model.audio_model.training is not frozen and model.text_model.training is not frozen
    assert model.audio_head.training
    out = model(**text_inputs(3), input_features=tiny_features(model.config, 3, 2), return_loss=True)
    out.loss.backward()
    heads = [(n, p) for n, p in model.named_parameters() if not n.startswith(("audio_model.", "text_model."))]
    assert heads and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in heads), [n for n, p in heads if p.grad is None]
    encoders = [(n, p) for n, p in model.named_parameters() if n.startswith(("audio_model.", "text_model."))]
    if frozen:
        assert all(p.grad is None and not p.requires_grad for _, p in encoders)
    else:
        # The text model's pooler is unused: the head pools the token sequence itself.
        used = [(n, p) for n, p in encoders if ".pooler." not in n]
        assert all(p.grad is not None for _, p in used), [n for n, p in used if p.grad is None]


def test_from_pretrained_backbones_loads_weights_bitwise(tmp_path):
    from transformers import ClapConfig, ClapModel, RobertaModel, WhisperModel

    torch.manual_seed(0)
    clap = ClapModel(ClapConfig(audio_config=tiny_clap_audio_config().to_dict(), text_config=tiny_roberta_config().to_dict(), projection_dim=16))
    clap.save_pretrained(tmp_path / "clap")
    whisper = WhisperModel(tiny_whisper_config())
    whisper.save_pretrained(tmp_path / "whisper")
    roberta = RobertaModel(tiny_roberta_config())
    roberta.save_pretrained(tmp_path / "roberta")

    for audio_dir, reference in ((tmp_path / "clap", clap.audio_model), (tmp_path / "whisper", whisper.encoder)):
        model = AtrModel.from_pretrained_backbones(audio=str(audio_dir), text=str(tmp_path / "roberta"), projection_dim=16, head_hidden_size=32, head_heads=4, cross_modal_heads=4)
        for name, tensor in reference.state_dict().items():
            assert torch.equal(model.audio_model.encoder.state_dict()[name], tensor), name
        for name, tensor in roberta.state_dict().items():
            assert torch.equal(model.text_model.state_dict()[name], tensor), name
        assert model.config.text_backbone_id == str(tmp_path / "roberta")


def test_from_pretrained_backbones_rejects_unknown_audio_backbone(tmp_path):
    from transformers import RobertaModel

    RobertaModel(tiny_roberta_config()).save_pretrained(tmp_path / "roberta")
    with pytest.raises(ValueError, match="CLAP .HTSAT. or Whisper"):
        AtrModel.from_pretrained_backbones(audio=str(tmp_path / "roberta"), text=str(tmp_path / "roberta"))


CHILD = textwrap.dedent(
    """
    import sys, torch
    sys.modules["atr"] = None  # importing atr fails: only the Hub code next to the weights can be used
    try:
        import atr
        raise SystemExit("atr was importable")
    except ImportError:
        pass
    from transformers import AutoModel
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    inputs = torch.load(sys.argv[2], weights_only=True)
    with torch.no_grad():
        out = model(**inputs)
    torch.save({"audio": out.audio_embeds, "text": out.text_embeds}, sys.argv[3])
    """
)


@pytest.mark.parametrize("audio,text", [("clap", "roberta"), ("whisper", "bert")])
def test_hub_round_trip_without_atr_installed(tmp_path, audio, text):
    model = make_model(audio, text).eval()
    model.save_pretrained(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"model.safetensors", "config.json", "configuration_atr.py", "modeling_atr.py"} <= files
    assert not any(name.endswith(".bin") for name in files)
    inputs = {**text_inputs(2), "input_features": tiny_features(model.config, 2, 2), "chunk_mask": torch.tensor([[1, 1], [1, 0]])}
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "child.py").write_text(CHILD)
    subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path / "model"), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        check=True, cwd=tmp_path,
    )
    reloaded = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        original = model(**inputs)
    assert (reloaded["audio"] - original.audio_embeds).abs().max() < 1e-6
    assert (reloaded["text"] - original.text_embeds).abs().max() < 1e-6


def recall_at_1(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    target = torch.arange(out.logits_per_audio.shape[0])
    return (out.logits_per_audio.argmax(1) == target).float().mean().item(), (out.logits_per_text.argmax(1) == target).float().mean().item()


def test_tiny_model_overfits_16_pairs():
    """The full hybrid loss learns; from random encoders the alignment terms are ramped in as AtrTrainer does."""
    model = make_model(seed=0)
    inputs = {**text_inputs(16, seed=3), "input_features": tiny_features(model.config, 16, 1, seed=4)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(200):
        model.train()
        loss = model(**inputs, return_loss=True, alignment_scale=min(1.0, step / 50)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 19 and recall_at_1(model.eval(), inputs) == (1.0, 1.0):
            break
    assert recall_at_1(model.eval(), inputs) == (1.0, 1.0)


@pytest.mark.parametrize("pooling", ["mean", "mean_max"])
def test_linear_only_head_with_zero_transformer_layers(pooling):
    model = make_model(head_layers=0, audio_token_pooling=pooling)
    assert model.audio_head.layers is None
    # clips with one real chunk beside clips with two: padding chunks reach the training-only branch too
    out = model(**text_inputs(3), input_features=tiny_features(model.config, 3, 2), chunk_mask=torch.tensor([[1, 1], [1, 0], [1, 0]]), return_loss=True)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert out.audio_embeds.shape == (3, 16) and model.audio_head.input_projection.weight.grad is not None


def test_alignment_scale_weights_only_the_alignment_terms():
    model = make_model().eval()
    inputs = {**text_inputs(3), "input_features": tiny_features(model.config, 3, 1), "return_loss": True}
    with torch.no_grad():
        full = model(**inputs)
        ramped = model(**inputs, alignment_scale=0.25)
    torch.testing.assert_close(ramped.loss, full.loss_contrastive + 0.25 * (full.loss_cosine + full.loss_l1))


@pytest.mark.parametrize("fused", [False, True])
def test_clap_adapter_stretches_frames_as_htsat_does(fused):
    """In eval mode the adapter's one-matmul frame stretch gives HTSAT's own tokens (bicubic interpolation inside it)."""
    from transformers import ClapAudioConfig

    from atr.backbone_clap import ClapAudioAdapter, bicubic_stretch_matrix

    torch.manual_seed(0)
    config = ClapAudioConfig(**{**tiny_clap_audio_config().to_dict(), "enable_fusion": fused})
    adapter = ClapAudioAdapter(config).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so the order of the two maps matters
        adapter.encoder.audio_encoder.batch_norm.running_mean.normal_()
        adapter.encoder.audio_encoder.batch_norm.running_var.uniform_(0.5, 2.0)
    features = torch.randn(3, 4 if fused else 1, 201, config.num_mel_bins)  # 201 frames, stretched to 256
    is_longer = torch.zeros(3, 1, dtype=torch.bool) if fused else None
    with torch.no_grad():
        tokens, _ = adapter(features)
        reference = adapter.encoder(input_features=features, is_longer=is_longer).last_hidden_state.flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, reference, rtol=1e-4, atol=1e-5)
    stretch = torch.nn.functional.interpolate(features, (256, config.num_mel_bins), mode="bicubic", align_corners=True)
    torch.testing.assert_close(torch.einsum("st,nctm->ncsm", torch.from_numpy(bicubic_stretch_matrix(201, 256)), features), stretch)


def test_whisper_spec_augment_masks_real_frames_in_training_only():
    from atr.backbone_whisper import WhisperAudioAdapter

    config = tiny_whisper_config()
    config.update(dict(apply_spec_augment=True, mask_time_prob=0.3, mask_time_length=4, mask_time_min_masks=1,
                       mask_feature_prob=0.3, mask_feature_length=4, mask_feature_min_masks=1))
    adapter = WhisperAudioAdapter(config)
    seen = []
    adapter.encoder.conv1.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    features = torch.rand(2, 80, 100) + 1  # no zeros of its own
    frame_mask = torch.ones(2, 100, dtype=torch.bool)
    frame_mask[1, 30:] = False  # clip 1: 30 real frames, then padding
    original = features.clone()
    adapter.train()
    adapter(features, frame_mask)
    adapter.eval()
    adapter(features, frame_mask)
    masked, unmasked = seen
    assert torch.equal(features, original) and torch.equal(unmasked, original)  # eval never masks; input untouched
    zeroed = masked == 0
    time_masked, feature_masked = zeroed.all(dim=1), zeroed.all(dim=2)
    assert time_masked[0].any() and time_masked[1, :30].any() and not time_masked[1, 30:].any()
    assert feature_masked.any(dim=1).all()
    assert torch.equal(masked[~zeroed], original[~zeroed])
