"""The v2 fig. 4 table in units.py (`PLACEMENTS`, named `FIG4` before issue 32) builds the same modules, in the
same order and with the same names (the keys of every checkpoint), as the combined conditionals it replaced;
recorded from that code."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest
from torch import nn

from resnetlab.networks.spec import UNITS, ResNetSpec
from resnetlab.networks.units import PLACEMENTS, Unit

# (unit, block) -> (preact, branch, post) of a unit that is not the net's first (the first has no preact: its
# activation comes from the stem); conv{in}-{out}/{kernel}s{stride}, "!" marks an in-place ReLU
BUILT_BEFORE = {
    ("original", "basic"): (
        "",
        "conv1:conv8-4/3s2 bn1:bn4 relu1:relu! conv2:conv4-4/3s1 bn2:bn4",
        "relu:relu!",
    ),
    ("original", "bottleneck"): (
        "",
        "conv1:conv8-4/1s2 bn1:bn4 relu1:relu! conv2:conv4-4/3s1 bn2:bn4 relu2:relu! "
        "conv3:conv4-16/1s1 bn3:bn16",
        "relu:relu!",
    ),
    ("bn_after_add", "basic"): (
        "",
        "conv1:conv8-4/3s2 bn1:bn4 relu1:relu! conv2:conv4-4/3s1",
        "bn:bn4 relu:relu!",
    ),
    ("bn_after_add", "bottleneck"): (
        "",
        "conv1:conv8-4/1s2 bn1:bn4 relu1:relu! conv2:conv4-4/3s1 bn2:bn4 relu2:relu! "
        "conv3:conv4-16/1s1",
        "bn:bn16 relu:relu!",
    ),
    ("relu_before_add", "basic"): (
        "",
        "conv1:conv8-4/3s2 bn1:bn4 relu1:relu! conv2:conv4-4/3s1 bn2:bn4 relu2:relu!",
        "",
    ),
    ("relu_before_add", "bottleneck"): (
        "",
        "conv1:conv8-4/1s2 bn1:bn4 relu1:relu! conv2:conv4-4/3s1 bn2:bn4 relu2:relu! "
        "conv3:conv4-16/1s1 bn3:bn16 relu3:relu!",
        "",
    ),
    ("relu_preact", "basic"): (
        "relu1:relu",
        "conv1:conv8-4/3s2 bn1:bn4 relu2:relu! conv2:conv4-4/3s1 bn2:bn4",
        "",
    ),
    ("relu_preact", "bottleneck"): (
        "relu1:relu",
        "conv1:conv8-4/1s2 bn1:bn4 relu2:relu! conv2:conv4-4/3s1 bn2:bn4 relu3:relu! "
        "conv3:conv4-16/1s1 bn3:bn16",
        "",
    ),
    ("preact", "basic"): (
        "bn1:bn8 relu1:relu",
        "conv1:conv8-4/3s2 bn2:bn4 relu2:relu! conv2:conv4-4/3s1",
        "",
    ),
    ("preact", "bottleneck"): (
        "bn1:bn8 relu1:relu",
        "conv1:conv8-4/1s2 bn2:bn4 relu2:relu! conv2:conv4-4/3s1 bn3:bn4 relu3:relu! "
        "conv3:conv4-16/1s1",
        "",
    ),
}


def _describe(seq: nn.Module) -> str:
    out = []
    for name, m in seq.named_children():
        if isinstance(m, nn.Conv2d):
            out.append(f"{name}:conv{m.in_channels}-{m.out_channels}/{m.kernel_size[0]}s{m.stride[0]}")
        elif isinstance(m, nn.BatchNorm2d):
            out.append(f"{name}:bn{m.num_features}")
        elif isinstance(m, nn.ReLU):
            out.append(f"{name}:relu" + ("!" if m.inplace else ""))
        else:
            out.append(f"{name}:{type(m).__name__}")
    return " ".join(out)


@pytest.mark.parametrize("key", sorted(BUILT_BEFORE))
@pytest.mark.parametrize("first", [False, True])
def test_each_unit_kind_builds_what_it_built_before(key: tuple[str, str], first: bool) -> None:
    unit, block = key
    spec = ResNetSpec(depth=20 if block == "basic" else 29, block=block, unit=unit)
    u = Unit(spec, 8, 4, 2, first=first)
    pre = "" if isinstance(u.preact, nn.Identity) else _describe(u.preact)
    want_pre, want_branch, want_post = BUILT_BEFORE[key]
    assert (pre, _describe(u.branch), _describe(u.post)) == ("" if first else want_pre, want_branch, want_post)


def test_the_table_has_every_unit_of_the_spec() -> None:
    assert tuple(PLACEMENTS) == UNITS


def test_the_architecture_doc_quotes_the_unit_as_it_is() -> None:
    """docs/architecture.md quotes `Unit.forward` beside the paper's equations (issue 32): the quote is the code."""
    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert f"```python\n{textwrap.dedent(inspect.getsource(Unit.forward))}```" in doc
