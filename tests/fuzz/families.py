"""Every family, registered by importing its module, in campaign order (the order they were written in)."""

from tests.fuzz import args, fetch, inputs, killtrack, reuse, surfaces, tracker  # noqa: F401 - each registers its own
from tests.fuzz.core import FAMILIES

ORDER = ("args", "set", "config", "summary", "checkpoint", "suite", "images", "weights", "cifar",
         "export", "predict", "hub", "safetensors", "rundir", "env", "fetch", "tracker", "reuse", "killtrack")
assert set(ORDER) == set(FAMILIES), sorted(set(ORDER) ^ set(FAMILIES))
