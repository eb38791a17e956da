"""The public API: everything the command line does, from Python, each a thin layer over what the command runs.

- nets: `create_model(name, weights=None, **overrides)`, `load(path)` -> `Trained` (module, classes, image
  size, `preprocess`, `predict`);
- training: `train(model=..., data=..., ...)` -> `Run`, `Run.open(path)`; a `Run` gives its `config`,
  `metrics`, `summary`, `model()`, `evaluate()`, `export()`, `predict()`, `resume()`; `evaluate(path)`;
- studies: `experiment(suite, ...)` -> the results rows (`MemberResult`), `propagation(...)` -> `Propagation`,
  `fetch(name)` -> the path of a verified CIFAR archive.

Keywords are the command line's flags and the config's keys; errors are the same one-line `ResnetlabError`s;
nothing prints unless `progress=True`.

May import: errors, version, files, networks, data, runs, settings, weights, training, experiments.
"""

from resnetlab.api.models import Trained, create_model, load
from resnetlab.api.runs import Run, evaluate, train
from resnetlab.api.studies import Propagation, experiment, fetch, list_suites, propagation

__all__ = ["Propagation", "Run", "Trained", "create_model", "evaluate", "experiment", "fetch", "list_suites", "load",
           "propagation", "train"]
