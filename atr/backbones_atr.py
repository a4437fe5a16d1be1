"""The audio backbone registry: a new family is one file, atr/backbone_<family>.py (an AudioBackbone), registered below.

Every other module asks this registry and names no family. The families are flat files next to this one, imported with
single-dot relative imports: transformers' `custom_object_save` copies only files named by `from .x import y`
(`dynamic_module_utils.get_relative_imports`, which maps `.x` to `x.py` beside the importer), so a subpackage such as
`atr/backbones/clap.py` would not travel with `save_pretrained` and a model could not load with `trust_remote_code`.
"""

from .backbone_clap import ClapBackbone
from .backbone_spec import AudioBackbone
from .backbone_whisper import WhisperBackbone

# The registered families by their audio config's model_type.
AUDIO_BACKBONES: dict[str, AudioBackbone] = {}


def register_audio_backbone(spec: AudioBackbone, exist_ok: bool = False) -> AudioBackbone:
    """Make a backbone family known to AtrConfig, AtrModel, AtrFeatureExtractor, the ONNX model and the card; returns `spec`."""
    if not isinstance(spec, AudioBackbone):
        raise TypeError(f"register_audio_backbone got a {type(spec).__name__}: pass an instance of an AudioBackbone subclass")
    missing = [field for field in ("name", "model_type", "adapter") if not getattr(spec, field)]
    if missing:
        raise ValueError(f"{type(spec).__name__} does not set {missing}: set them as class attributes")
    taken = [other for other in AUDIO_BACKBONES.values() if spec.name == other.name or spec.model_type == other.model_type]
    if taken and not exist_ok:
        raise ValueError(
            f"{type(spec).__name__} (name {spec.name!r}, model_type {spec.model_type!r}) clashes with the registered "
            f"{type(taken[0]).__name__}: pick other names, or pass exist_ok=True to replace it"
        )
    for other in taken:
        del AUDIO_BACKBONES[other.model_type]
    AUDIO_BACKBONES[spec.model_type] = spec
    return spec


def unregister_audio_backbone(model_type: str) -> AudioBackbone:
    """Forget the family of `model_type` (e.g. after a test); returns its spec."""
    return AUDIO_BACKBONES.pop(audio_backbone(model_type).model_type)


def audio_backbone(model_type: str | None, what: str = "audio_config") -> AudioBackbone:
    """The family whose audio config has `model_type`; a clear error naming `what` and the registered families otherwise."""
    if model_type not in AUDIO_BACKBONES:
        hints = " or ".join(spec.config_hint or f"a {spec.model_type} config" for spec in AUDIO_BACKBONES.values())
        raise ValueError(f"{what} has model_type {model_type!r}, expected one of {tuple(AUDIO_BACKBONES)}: pass {hints}")
    return AUDIO_BACKBONES[model_type]


def audio_backbone_named(name: str) -> AudioBackbone:
    """The family an AtrFeatureExtractor's `backbone` argument names."""
    for spec in AUDIO_BACKBONES.values():
        if spec.name == name:
            return spec
    raise ValueError(f"backbone is {name!r}, expected one of {tuple(spec.name for spec in AUDIO_BACKBONES.values())}")


def audio_backbone_for_checkpoint(model_type: str, source: object) -> AudioBackbone:
    """The family that loads a pretrained checkpoint (`source`, for the error) whose config has `model_type`."""
    for spec in AUDIO_BACKBONES.values():
        if model_type in spec.checkpoint_model_types:
            return spec
    kinds = " or ".join(spec.checkpoint_hint for spec in AUDIO_BACKBONES.values() if spec.checkpoint_model_types)
    raise ValueError(f"audio backbone {source!r} has model_type {model_type!r}: use a {kinds} checkpoint")


register_audio_backbone(ClapBackbone())
register_audio_backbone(WhisperBackbone())
# The family of an AtrConfig built without an audio_config.
DEFAULT_AUDIO_MODEL_TYPE = ClapBackbone.model_type

__all__ = [
    "AUDIO_BACKBONES", "AudioBackbone", "DEFAULT_AUDIO_MODEL_TYPE", "audio_backbone", "audio_backbone_for_checkpoint",
    "audio_backbone_named", "register_audio_backbone", "unregister_audio_backbone",
]
