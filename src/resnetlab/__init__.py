"""resnetlab: the deep residual networks of He et al. (CVPR 2016, ECCV 2016) to build, train and study."""

from resnetlab.errors import ResnetlabError
from resnetlab.networks.counting import count_macs, count_params
from resnetlab.networks.net import ResNet
from resnetlab.networks.registry import create_model, get_spec, list_models
from resnetlab.networks.spec import ResNetSpec
from resnetlab.version import __version__

__all__ = [
    "__version__",
    "ResNet",
    "ResNetSpec",
    "ResnetlabError",
    "count_macs",
    "count_params",
    "create_model",
    "get_spec",
    "list_models",
]
