"""The spec fields that __post_init__ fills (`units`, `widths`, `strides`, `stem_width`, the shortcut kind's
parameters) hold resolved values once a spec exists. Until issue 32 each of the first four had a second name, a
typed reader (`stage_units`, `stage_widths`, `stage_strides`, `stem_channels`); one name each is left."""

from __future__ import annotations

import pytest

from resnetlab.errors import SpecError
from resnetlab.networks.spec import ResNetSpec


def test_defaults_are_read_resolved() -> None:
    spec = ResNetSpec(depth=20)
    assert (spec.units, spec.widths, spec.strides, spec.stem_width) == ((3, 3, 3), (16, 32, 64), (1, 2, 2), 16)
    big = ResNetSpec(depth=50, stem="imagenet", block="bottleneck", units=[3, 4, 6, 3])
    assert (big.units, big.widths, big.strides, big.stem_width) == ((3, 4, 6, 3), (64, 128, 256, 512), (1, 2, 2, 2),
                                                                    64)
    assert big.out_widths == (256, 512, 1024, 2048)
    assert not hasattr(spec, "stage_units") and not hasattr(spec, "stem_channels")


def test_shortcut_parameters_are_read_for_their_kind_only() -> None:
    assert ResNetSpec(shortcut="scaling").shortcut_params == {"shortcut_scale": 1.0, "branch_scale": 1.0}
    assert ResNetSpec(shortcut="scaling", shortcut_scale=0.5).shortcut_params == {"shortcut_scale": 0.5,
                                                                                   "branch_scale": 1.0}
    assert ResNetSpec(shortcut="exclusive_gating", gate_bias=-6).shortcut_params == {"gate_bias": -6.0}
    assert ResNetSpec(shortcut="dropout").shortcut_params == {"dropout": 0.5}
    assert ResNetSpec().shortcut_params == {}
    with pytest.raises(SpecError, match="dropout: only used by shortcut 'dropout', not 'identity'"):
        ResNetSpec(dropout=0.1)
