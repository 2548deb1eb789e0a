"""audiointerp: explain audio classifiers post hoc and measure how good the explanations are."""

__version__ = "0.1.0"
