"""The typed readers of the spec fields that __post_init__ fills (`stage_units`, ..., `drop_rate`)."""

from __future__ import annotations

import pytest

from resnetlab.errors import SpecError
from resnetlab.networks.spec import ResNetSpec


def test_defaults_are_read_resolved() -> None:
    spec = ResNetSpec(depth=20)
    assert spec.units is not None  # filled, as the typed readers return
    assert (spec.stage_units, spec.stage_widths, spec.stage_strides, spec.stem_channels) == (
        (3, 3, 3), (16, 32, 64), (1, 2, 2), 16)
    big = ResNetSpec(depth=50, stem="imagenet", block="bottleneck", units=(3, 4, 6, 3))
    assert (big.stage_widths, big.stage_strides, big.stem_channels) == ((64, 128, 256, 512), (1, 2, 2, 2), 64)
    assert big.out_widths == (256, 512, 1024, 2048)


def test_shortcut_parameters_are_read_for_their_kind_only() -> None:
    assert ResNetSpec(shortcut="scaling").scaling == (1.0, 1.0)
    assert ResNetSpec(shortcut="scaling", shortcut_scale=0.5).scaling == (0.5, 1.0)
    assert ResNetSpec(shortcut="exclusive_gating", gate_bias=-6).gate_init == -6.0
    assert ResNetSpec(shortcut="dropout").drop_rate == 0.5
    with pytest.raises(SpecError, match="dropout: not used by shortcut 'identity'"):
        ResNetSpec().drop_rate  # noqa: B018
