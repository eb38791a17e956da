"""resnetlab: the deep residual networks of He et al. (CVPR 2016, ECCV 2016) to build, train and study.

Everything the command line does is here (`resnetlab.api`): build or load a net (`create_model`, `load`), train
one (`train` -> `Run`), open, evaluate, export and predict with a run (`Run.open`, `evaluate`), run the
papers' experiments (`experiment`), the propagation analysis (`propagation`) and fetch CIFAR (`fetch`).
"""

from resnetlab.api import (
    Propagation,
    Run,
    Trained,
    create_model,
    evaluate,
    experiment,
    fetch,
    list_suites,
    load,
    propagation,
    train,
)
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.results import MemberResult
from resnetlab.networks.counting import count_macs, count_params
from resnetlab.networks.net import ResNet
from resnetlab.networks.registry import get_spec, list_models
from resnetlab.networks.spec import ResNetSpec
from resnetlab.runs.records import Summary
from resnetlab.version import __version__

__all__ = ["__version__", "MemberResult", "Propagation", "ResNet", "ResNetSpec", "ResnetlabError", "Run", "Summary",
           "Trained", "count_macs", "count_params", "create_model", "evaluate", "experiment", "fetch", "get_spec",
           "list_models", "list_suites", "load", "propagation", "train"]
