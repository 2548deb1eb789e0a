"""audiointerp: explain audio classifiers post hoc and measure how good the explanations are.

The Python API (:mod:`audiointerp.api`): ``explain`` one clip or a few, ``evaluate`` many, and the
building blocks a run composes: the features, explainers by name, the masks, the metrics. Importing
the package changes no global state (matplotlib's backend, the umask, torch's modes).
"""

__version__ = "0.1.0"

from audiointerp.api import Explanation, evaluate, explain, get_explainer  # noqa: E402
from audiointerp.features import LogMel, LogStft  # noqa: E402
from audiointerp.masks import MASK_NAMES, apply_mask, make_masks  # noqa: E402
from audiointerp.metrics import METRIC_NAMES, score  # noqa: E402
from audiointerp.models import Classifier, as_classifier  # noqa: E402

__all__ = ["Classifier", "Explanation", "LogMel", "LogStft", "MASK_NAMES", "METRIC_NAMES", "apply_mask", "as_classifier",
           "evaluate", "explain", "get_explainer", "make_masks", "score", "__version__"]
