"""The hybrid loss as one unit: its value, its warm-up passed per call, its term names defined once."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_atr_config, tiny_features
from transformers import TrainingArguments

from atr import AtrConfig, AtrModel, hp_search
from atr.loss_atr import LOSS_TERMS, LOSS_WEIGHTS, PAPER_WEIGHTS, AtrHybridLoss
from atr.model_card import _loss
from atr.modeling_atr import AtrOutput
from atr.trainer import AtrTrainer

ROOT = Path(__file__).resolve().parents[1]


def make_model(**overrides):
    torch.manual_seed(0)
    return AtrModel(tiny_atr_config(**overrides))


def paired_inputs(config, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (batch, 6), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "input_features": tiny_features(config, batch, 1, seed=seed)}


class PairedDataset(torch.utils.data.Dataset):
    def __init__(self, config, size=8):
        self.rows = paired_inputs(config, size, seed=1)

    def __len__(self):
        return self.rows["input_ids"].shape[0]

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.rows.items()}


def test_loss_outside_the_trainer_is_the_same_before_and_after_a_run_stopped_mid_warmup(tmp_path):
    """A run stopped during the alignment warm-up leaves no scale behind: model(return_loss=True) is the full loss, every time."""
    model = make_model(alignment_warmup_steps=10).eval()
    inputs = {**paired_inputs(model.config), "return_loss": True}
    with torch.no_grad():
        before = model(**inputs)
    # learning rate 0: the weights stay as they were, so only state left on the model could change the loss
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=2, per_device_train_batch_size=4,
                             save_strategy="no", learning_rate=0.0)
    AtrTrainer(model=model, args=args, train_dataset=PairedDataset(model.config)).train()
    model.eval()
    with torch.no_grad():
        first, second = model(**inputs), model(**inputs)
    torch.testing.assert_close(first.loss, before.loss)
    torch.testing.assert_close(second.loss, first.loss, rtol=0, atol=0)
    torch.testing.assert_close(first.loss, first.loss_contrastive + first.loss_cosine + first.loss_l1)  # all lambdas 1


def test_hybrid_loss_terms_and_total_match_the_formula_computed_by_hand():
    config = tiny_atr_config(lambda_cosine=0.5, lambda_l1=0.25, lambda_contrastive=2.0)
    g = torch.Generator().manual_seed(0)
    audio, text = F.normalize(torch.randn(5, 8, generator=g), dim=-1), F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    pair_audio, pair_text = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    s = torch.tensor(14.0)
    out = AtrHybridLoss(config)(audio, text, pair_audio, pair_text, s, alignment_scale=0.3)

    cosine = sum(1 - torch.dot(pair_audio[i], pair_text[i]) / (pair_audio[i].norm() * pair_text[i].norm()) for i in range(5)) / 5
    a, t = pair_audio / pair_audio.norm(dim=1, keepdim=True), pair_text / pair_text.norm(dim=1, keepdim=True)
    l1 = sum(abs(a[i, d] - t[i, d]) for i in range(5) for d in range(8)) / 40
    logits = s * audio @ text.T
    ce_audio = -sum(torch.log_softmax(logits[i], 0)[i] for i in range(5)) / 5
    ce_text = -sum(torch.log_softmax(logits.T[i], 0)[i] for i in range(5)) / 5
    contrastive = (ce_audio + ce_text) / 2
    assert set(out) == {"loss", *LOSS_TERMS}
    torch.testing.assert_close(out["loss_cosine"], cosine)
    torch.testing.assert_close(out["loss_l1"], l1)
    torch.testing.assert_close(out["loss_contrastive"], contrastive)
    torch.testing.assert_close(out["loss"], 0.3 * (0.5 * cosine + 0.25 * l1) + 2.0 * contrastive)
    torch.testing.assert_close(AtrHybridLoss(config)(audio, text, pair_audio, pair_text, s)["loss"], 0.5 * cosine + 0.25 * l1 + 2.0 * contrastive)


@pytest.mark.parametrize("warmup,step,expected", [(0, 0, 1.0), (10, 0, 0.0), (10, 4, 0.4), (10, 10, 1.0), (10, 25, 1.0)])
def test_warmup_scale_ramps_linearly_over_alignment_warmup_steps(warmup, step, expected):
    assert AtrHybridLoss(tiny_atr_config(alignment_warmup_steps=warmup)).warmup_scale(step) == pytest.approx(expected)


def test_the_model_loss_is_the_hybrid_loss_modules(monkeypatch):
    model = make_model().eval()
    assert isinstance(model.hybrid_loss, AtrHybridLoss) and not hasattr(model, "alignment_scale")
    calls = []
    forward = model.hybrid_loss.forward
    monkeypatch.setattr(model.hybrid_loss, "forward", lambda *args, **kwargs: calls.append(kwargs) or forward(*args, **kwargs))
    with torch.no_grad():
        out = model(**paired_inputs(model.config), return_loss=True, alignment_scale=0.5)
    assert len(calls) == 1
    assert out.loss is not None and all(out[name] is not None for name in LOSS_TERMS)


def test_no_loss_math_outside_the_loss_file():
    """Cross-entropy, 1 - cos and mean absolute differences are computed only in atr/loss_atr.py."""
    pattern = re.compile(r"cross_entropy|1 - cos|1 - \(.*\.sum\(-1\)\)|\.abs\(\)\.mean\(\)")
    files = [*ROOT.glob("atr/**/*.py"), *ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("*.py")]
    code = {p: re.sub(r'(?s:""".*?""")|#[^\n]*', "", p.read_text()) for p in files if p.name != "loss_atr.py"}  # docstrings and comments may name the terms
    assert [str(p.relative_to(ROOT)) for p, text in code.items() if pattern.search(text)] == []


def test_loss_term_names_and_weights_come_from_the_loss_file():
    assert tuple(LOSS_TERMS) and hp_search.LOSS_WEIGHTS is PAPER_WEIGHTS
    assert LOSS_WEIGHTS == tuple(term.weight for term in LOSS_TERMS.values())
    assert all(weight in AtrConfig().to_dict() for weight in LOSS_WEIGHTS)
    assert {f.name for f in dataclasses.fields(AtrOutput) if f.name.startswith("loss")} == {"loss", *LOSS_TERMS}
    card = _loss(tiny_atr_config(lambda_cosine=0.5, lambda_l1=0.25, lambda_contrastive=3.0, lambda_pair_contrastive=0.5))
    for term in LOSS_TERMS.values():
        assert term.formula in card
    assert "A~ T~^T" not in _loss(tiny_atr_config())  # a zero-weight variant is not in the card
    assert "0.5 * mean_i(1 - cos(a~_i, t~_i))" in card and "3 * (CE(" in card


def test_trainer_logs_every_loss_term(tmp_path):
    model = make_model()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1, per_device_train_batch_size=4,
                             save_strategy="no", logging_steps=1)
    trainer = AtrTrainer(model=model, args=args, train_dataset=PairedDataset(model.config))
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert set(LOSS_TERMS) <= set(logged)


def test_loss_file_travels_with_the_model(tmp_path):
    make_model().save_pretrained(tmp_path)
    assert (tmp_path / "loss_atr.py").is_file()


def test_pair_contrastive_variant_is_infonce_over_the_normalised_pair_vectors_with_its_own_weight():
    config = tiny_atr_config(lambda_pair_contrastive=0.7)
    g = torch.Generator().manual_seed(1)
    audio, text = F.normalize(torch.randn(4, 8, generator=g), dim=-1), F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    pair_audio, pair_text = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    out = AtrHybridLoss(config)(audio, text, pair_audio, pair_text, torch.tensor(10.0))
    logits = 10.0 * F.normalize(pair_audio, dim=-1) @ F.normalize(pair_text, dim=-1).T
    expected = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    torch.testing.assert_close(out["loss_pair_contrastive"], expected)
    torch.testing.assert_close(out["loss"], out["loss_cosine"] + out["loss_l1"] + out["loss_contrastive"] + 0.7 * expected)


def test_alignment_pairs_inference_aligns_the_inference_embeddings_of_each_pair():
    model = make_model(alignment_pairs="inference").eval()
    with torch.no_grad():
        out = model(**paired_inputs(model.config), return_loss=True)
    torch.testing.assert_close(out.loss_cosine, (1 - (out.audio_embeds * out.text_embeds).sum(-1)).mean())
    with pytest.raises(ValueError, match="alignment_pairs"):
        tiny_atr_config(alignment_pairs="tokens")


def test_the_loss_refuses_unpaired_batches_naming_the_counts():
    model = make_model().eval()
    inputs = paired_inputs(model.config)
    inputs["input_ids"], inputs["attention_mask"] = inputs["input_ids"][:3], inputs["attention_mask"][:3]
    with torch.no_grad(), pytest.raises(ValueError, match="needs paired inputs, got 4 clips and 3 captions"):
        model(**inputs, return_loss=True)
