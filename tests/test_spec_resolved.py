"""The typed readers of the spec fields that __post_init__ fills (`stage_units`, ..., `shortcut_params`)."""

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
    assert ResNetSpec(shortcut="scaling").shortcut_params == {"shortcut_scale": 1.0, "branch_scale": 1.0}
    assert ResNetSpec(shortcut="scaling", shortcut_scale=0.5).shortcut_params == {"shortcut_scale": 0.5,
                                                                                   "branch_scale": 1.0}
    assert ResNetSpec(shortcut="exclusive_gating", gate_bias=-6).shortcut_params == {"gate_bias": -6.0}
    assert ResNetSpec(shortcut="dropout").shortcut_params == {"dropout": 0.5}
    assert ResNetSpec().shortcut_params == {}
    with pytest.raises(SpecError, match="dropout: only used by shortcut 'dropout', not 'identity'"):
        ResNetSpec(dropout=0.1)
