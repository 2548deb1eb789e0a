"""An explainer built in code (``Lime()``) behaves as the run's config builds it (``explainer=lime``).

For every ``conf/explainer/*.yaml``: each value, resolved under the default config, equals the
default of its class's constructor argument, and every constructor argument is in the config. A
variant that starts from another explainer's config (``lmac_sparse`` from ``lmac``) differs from
the class defaults in exactly the values its own file sets.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
CONFIGS = sorted(path.stem for path in (CONF_DIR / "explainer").glob("*.yaml"))


def _code_defaults(cls: type) -> dict:
    """Constructor argument -> default (inspect.Parameter.empty where it has none), *args and **kwargs left out."""
    return {name: parameter.default for name, parameter in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)}


def _same(code, config) -> bool:
    """A tuple default equals the list YAML gives; bools and numbers are not mixed up (True != 1)."""
    code = list(code) if isinstance(code, tuple) else code
    return type(code) is type(config) and code == config or (
        isinstance(code, float) and isinstance(config, (int, float)) and not isinstance(config, bool) and code == config)


def test_every_explainer_config_is_found():
    assert {"saliency", "gradcam", "lime", "shap", "shap_gradient", "integrated_gradients", "smoothgrad",
            "occlusion", "lmac", "lmac_sparse", "random", "oracle"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_values_equal_the_constructor_defaults(name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        values = OmegaConf.to_container(compose("config", overrides=[f"explainer={name}"]).explainer, resolve=True)
    cls = get_class(values.pop("_target_"))
    defaults = _code_defaults(cls)
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "explainer" / f"{name}.yaml"))
    variant = "defaults" in own  # starts from another explainer's config
    assert sorted(set(defaults) - set(values)) == [], f"explainer={name}: constructor arguments missing from the config"
    assert sorted(set(values) - set(defaults)) == [], f"explainer={name}: config keys {cls.__name__} does not take"
    differing = sorted(key for key, value in values.items() if not _same(defaults[key], value))
    if variant:
        assert set(differing) <= set(own) - {"defaults"}, (
            f"explainer={name}: differs from {cls.__name__}'s defaults in values it does not set itself")
        return
    assert differing == [], f"explainer={name}: " + "; ".join(
        f"{key}: config {values[key]!r}, {cls.__name__}() {defaults[key]!r}" for key in differing)
