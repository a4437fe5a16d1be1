"""AtrConfig: the audio and text backbones plus the retrieval head, pooling and hybrid-loss settings."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .backbones_atr import DEFAULT_AUDIO_MODEL_TYPE, audio_backbone

TEXT_POOLING_MODES = ("cls", "mean", "last_token")


class AtrConfig(PreTrainedConfig):
    r"""
    Configuration of an [`AtrModel`]: a dual encoder for audio-text retrieval (arXiv 2604.23323).

    Args:
        audio_config: the config of a registered audio backbone family (`backbones_atr`: `ClapAudioConfig` for HTSAT,
            `WhisperConfig` for its encoder), or a dict of one.
        text_config: any transformers text-encoder config (RoBERTa, BERT/MiniLM, Llama-style decoders).
        projection_dim: size of the shared embedding space.
        head_hidden_size: width of the transformer projection that refines each encoder's token sequence.
        head_layers / head_heads / head_dropout: depth, attention heads and dropout of that transformer projection.
        cross_modal_attention: train with bidirectional audio<->text cross attention feeding the alignment terms.
        cross_modal_heads: heads of the training-only cross-modal attention (it works in the projection_dim space).
        text_pooling: `cls`, `mean` or `last_token` (decoder LLMs) pooling of the text tokens.
        audio_token_pooling: `mean` or `mean_max` (mean + max) pooling of each chunk's audio tokens.
        lambda_cosine / lambda_l1 / lambda_contrastive: hybrid-loss weights.
        lambda_pair_contrastive: weight of a variant term, InfoNCE over the training-only pair vectors (0: the paper's loss).
        alignment_pairs: what the cosine and L1 terms align: `cross_modal` (the paper: the cross-modal attention's pair
            vectors) or `inference` (a variant: each pair's inference embeddings themselves).
        alignment_warmup_steps: AtrTrainer ramps the cosine and L1 weights linearly from 0 over this many steps. An
            encoder trained from scratch starts with near-identical outputs, where the alignment terms alone collapse
            every embedding onto one point (a fixed point the contrastive term cannot leave); 0 keeps full weights.
        logit_scale_init_value: initial 1/temperature (1/0.07, as CLAP); the model's `logit_scale` parameter holds its log.
        logit_scale_max: 1/temperature is clamped at this value (100) after each optimizer step.
        freeze_audio_encoder / freeze_text_encoder: keep a backbone frozen (eval mode, no gradients).
        gather_negatives: in distributed training, gather contrastive negatives from every process (with gradients).
        audio_chunk_batch_size: how many chunks go through the audio encoder at once (bounds memory on long audio).
    """

    model_type = "atr"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type=DEFAULT_AUDIO_MODEL_TYPE),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="roberta"),
    }

    audio_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int = 512
    head_hidden_size: int = 512
    head_layers: int = 1
    head_heads: int = 8
    head_dropout: float = 0.1
    cross_modal_attention: bool = True
    cross_modal_heads: int = 8
    text_pooling: str = "cls"
    audio_token_pooling: str = "mean"
    lambda_cosine: float = 1.0
    lambda_l1: float = 1.0
    lambda_contrastive: float = 1.0
    lambda_pair_contrastive: float = 0.0
    alignment_pairs: str = "cross_modal"
    alignment_warmup_steps: int = 0
    logit_scale_init_value: float = 1 / 0.07
    logit_scale_max: float = 100.0
    freeze_audio_encoder: bool = True
    freeze_text_encoder: bool = True
    gather_negatives: bool = True
    audio_chunk_batch_size: int = 32
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        audio_backbone(getattr(self.audio_config, "model_type", None)).check_config(self.audio_config)
        if self.audio_token_pooling not in ("mean", "mean_max"):
            raise ValueError(f"audio_token_pooling is {self.audio_token_pooling!r}, expected 'mean' or 'mean_max'")
        if self.alignment_pairs not in ("cross_modal", "inference"):
            raise ValueError(f"alignment_pairs is {self.alignment_pairs!r}, expected 'cross_modal' or 'inference'")
        if self.text_pooling not in TEXT_POOLING_MODES:
            raise ValueError(f"text_pooling is {self.text_pooling!r}, expected one of {TEXT_POOLING_MODES}")
        for width, name in (("head_hidden_size", "head_heads"), ("projection_dim", "cross_modal_heads")):
            if getattr(self, width) % getattr(self, name):
                raise ValueError(
                    f"{width} {getattr(self, width)} is not divisible by {name}={getattr(self, name)}: "
                    "pick a head count that divides it"
                )


__all__ = ["AtrConfig"]
