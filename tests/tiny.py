"""Tiny random backbones and tokenizers for tests (the configs transformers' own tests use); nothing is downloaded."""

import torch
from transformers import BertConfig, PreTrainedTokenizerFast, RobertaConfig

from atr import AtrConfig
from atr.backbones_atr import audio_backbone, audio_backbone_named

WORDS = "a the dog bark siren bell rain engine bird knock beep then while after loud soft far near sound of this is".split()


def tiny_clap_audio_config():
    """HTSAT with 16 mels and a 64x64 spectrogram image: time frames must be <= 256 (the clap spec's tiny config)."""
    return audio_backbone_named("clap").tiny_config()


def tiny_whisper_config():
    """Whisper encoder with 80 mels and 100 frames (50 positions) per chunk (the whisper spec's tiny config)."""
    return audio_backbone_named("whisper").tiny_config()


def tiny_roberta_config():
    """A 2-layer 32-wide RoBERTa."""
    return RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def tiny_bert_config():
    """A 2-layer 32-wide BERT."""
    return BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def tiny_atr_config(audio="clap", text="roberta", **overrides):
    """An AtrConfig around tiny random backbones; `audio` names a registered audio backbone family."""
    audio_config = audio_backbone_named(audio).tiny_config()
    text_config = tiny_roberta_config() if text == "roberta" else tiny_bert_config()
    kwargs = dict(projection_dim=16, head_hidden_size=32, head_heads=4, cross_modal_heads=4, head_dropout=0.0)
    kwargs.update(overrides)
    return AtrConfig(audio_config=audio_config, text_config=text_config, **kwargs)


def tiny_features(config, batch, chunks, seed=0):
    """Random chunked input_features shaped for the config's audio backbone."""
    generator = torch.Generator().manual_seed(seed)
    shape = audio_backbone(config.audio_config.model_type).tiny_feature_shape(config.audio_config)
    return torch.randn((batch, chunks, *shape), generator=generator)


def tiny_tokenizer():
    """A word-level BERT-style tokenizer over WORDS (ids < 99) that saves and reloads like any Hub tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=32,
    )
