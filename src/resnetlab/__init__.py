"""resnetlab: the deep residual networks of He et al. (CVPR 2016, ECCV 2016) to build, train and study."""

from .counting import count_macs, count_params
from .errors import ResnetlabError
from .net import ResNet
from .registry import create_model, get_spec, list_models
from .spec import ResNetSpec

__all__ = [
    "ResNet",
    "ResNetSpec",
    "ResnetlabError",
    "count_macs",
    "count_params",
    "create_model",
    "get_spec",
    "list_models",
]
__version__ = "0.1.0"
