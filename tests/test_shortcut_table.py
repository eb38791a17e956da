"""A shortcut kind is one `Shortcut` subclass and one row of `shortcuts.SHORTCUTS`: the spec's checks, the
builder, the init, `describe` and a training step all follow from the row, with nothing else changed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.errors import SpecError
from resnetlab.networks import shortcuts
from resnetlab.networks.describe import unit_rows
from resnetlab.networks.net import ResNet
from resnetlab.networks.shortcuts import Param, Shortcut, ShortcutKind
from resnetlab.networks.spec import ResNetSpec


class LearnedScale(Shortcut):
    """A toy kind: `y = s * h(x) + F` with a learned scalar s, initialised at the row's `shortcut_scale`."""

    def __init__(self, match: nn.Module, cin: int, cout: int, stride: int, *, shortcut_scale: float) -> None:
        super().__init__(match)
        self.start = shortcut_scale
        self.s = nn.Parameter(torch.zeros(()))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.s, self.start)

    def forward(self, h: Tensor, f: Tensor, x_preact: Tensor) -> Tensor:
        return self.s * h + f


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> str:
    row = ShortcutKind(LearnedScale, (Param("shortcut_scale", 0.25),), "{base}, learned x{shortcut_scale}")
    monkeypatch.setitem(shortcuts.SHORTCUTS, "learned_scale", row)
    return "learned_scale"


def test_the_row_makes_a_spec_with_its_parameters(toy: str) -> None:
    spec = ResNetSpec(depth=8, shortcut=toy)
    assert spec.shortcut_params == {"shortcut_scale": 0.25}
    assert ResNetSpec(depth=8, shortcut=toy, shortcut_scale=2).shortcut_params == {"shortcut_scale": 2.0}
    assert ResNetSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match="gate_bias: only used by shortcut 'exclusive_gating' or 'shortcut_gating'"):
        ResNetSpec(depth=8, shortcut=toy, gate_bias=1.0)
    with pytest.raises(SpecError, match="shortcut_scale: expected a finite number"):
        ResNetSpec(depth=8, shortcut=toy, shortcut_scale=float("nan"))
    with pytest.raises(SpecError, match="shortcut_scale: only used by shortcut 'scaling' or 'learned_scale'"):
        ResNetSpec(depth=8, shortcut_scale=0.5)


def test_the_row_builds_inits_and_describes_the_net(toy: str) -> None:
    torch.manual_seed(0)
    net = ResNet(ResNetSpec(depth=8, shortcut=toy, option="B", num_classes=3)).eval()
    found = [m for m in net.modules() if isinstance(m, LearnedScale)]
    assert len(found) == 3 and all(m.s.item() == 0.25 for m in found)  # the kind's own init ran
    unit = net.stages[0][0]
    x = torch.randn(2, 16, 8, 8)
    want = F.relu(0.25 * x + unit.branch(x))  # identity match (same shape), original unit's post-ReLU
    assert torch.allclose(unit(x), want, atol=1e-6)
    rows = unit_rows(net, 8)
    assert rows[0]["shortcut"] == "identity, learned x0.25"
    assert rows[1]["shortcut"] == "projection, learned x0.25"  # option B where the shape changes


def test_a_training_step_moves_the_toy_parameter(toy: str) -> None:
    torch.manual_seed(0)
    net = ResNet(ResNetSpec(depth=8, shortcut=toy, num_classes=3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = F.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    assert all(m.s.item() != 0.25 for m in net.modules() if isinstance(m, LearnedScale))


def test_each_paper_kind_is_a_row() -> None:
    assert list(shortcuts.SHORTCUTS) == ["identity", "scaling", "exclusive_gating", "shortcut_gating", "conv1x1",
                                         "dropout"]
    spec = ResNetSpec(depth=8, shortcut="exclusive_gating", gate_bias=-3)
    gates = [m.gate.bias for m in ResNet(spec).modules() if hasattr(m, "gate")]
    assert gates and all(torch.all(b == -3.0) for b in gates)  # b_g survives the net's own init
