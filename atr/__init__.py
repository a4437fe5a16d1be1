"""atr: robust audio-text retrieval, Hugging Face Hub-native (arXiv 2604.23323)."""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor

from .backbones_atr import AudioBackbone, register_audio_backbone, unregister_audio_backbone
from .configuration_atr import AtrConfig
from .feature_extraction_atr import AtrFeatureExtractor
from .modeling_atr import AtrModel, AtrOutput
from .processing_atr import AtrProcessor
from .pretrained import resolve_backbone

__version__ = "0.1.0"

# Local registration lets `AutoModel.from_pretrained(dir)` work when atr is installed; register_for_auto_class
# makes save_pretrained write auto_map and copy the Hub code files for machines where it is not.
AutoConfig.register("atr", AtrConfig, exist_ok=True)
AutoModel.register(AtrConfig, AtrModel, exist_ok=True)
AtrConfig.register_for_auto_class()
AtrModel.register_for_auto_class("AutoModel")
AutoFeatureExtractor.register(AtrConfig, AtrFeatureExtractor, exist_ok=True)
AutoProcessor.register(AtrConfig, AtrProcessor, exist_ok=True)
AtrFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
AtrProcessor.register_for_auto_class("AutoProcessor")
# Offline copies of known Hub backbones and faster-whisper folders load through from_pretrained_backbones.
AtrModel.resolve_backbone = staticmethod(resolve_backbone)

__all__ = [
    "AtrConfig", "AtrFeatureExtractor", "AtrModel", "AtrOutput", "AtrProcessor", "AudioBackbone", "__version__",
    "register_audio_backbone", "resolve_backbone", "unregister_audio_backbone",
]
