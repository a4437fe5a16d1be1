"""atr: robust audio-text retrieval, Hugging Face Hub-native (arXiv 2604.23323)."""

from transformers import AutoConfig, AutoModel

from .configuration_atr import AtrConfig
from .modeling_atr import AtrModel, AtrOutput

__version__ = "0.1.0"

# Local registration lets `AutoModel.from_pretrained(dir)` work when atr is installed; register_for_auto_class
# makes save_pretrained write auto_map and copy the Hub code files for machines where it is not.
AutoConfig.register("atr", AtrConfig, exist_ok=True)
AutoModel.register(AtrConfig, AtrModel, exist_ok=True)
AtrConfig.register_for_auto_class()
AtrModel.register_for_auto_class("AutoModel")

__all__ = ["AtrConfig", "AtrModel", "AtrOutput", "__version__"]
