"""Explainers: one file each, one interface.

Each explainer is a class chosen by ``conf/explainer/<name>.yaml`` through its ``_target_``; the
registry is that config folder, so adding an explainer is one file here plus one YAML there.
"""

from audiointerp.explainers.base import Explainer

__all__ = ["Explainer"]
