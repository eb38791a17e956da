"""Settings refused when the config is built, before anything is loaded (moved from test_monitor.py, issue 32;
the settings' fuller checks are in test_reliability.py and the fuzzer's `set` family)."""

from __future__ import annotations

import pytest

from resnetlab.errors import ConfigError
from resnetlab.settings.config import build_config


def test_bad_model_settings_fail_when_the_config_is_built() -> None:
    with pytest.raises(ConfigError, match="shortcut"):
        build_config(overrides={"model.shortcut": "sideways"})
    with pytest.raises(ConfigError, match="unknown model"):
        build_config(model="resnet21x")
    with pytest.raises(ConfigError, match=r"^data\.normalize: 'zca' is not one of"):
        build_config(overrides={"data.normalize": "zca"})
