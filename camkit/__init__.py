"""camkit: class activation maps for any PyTorch classifier.

The entry point is :func:`camkit.explain`; :class:`camkit.Explainer` is its reusable form.
"""

__version__ = "0.1.0"

from camkit.explain import Explainer, Explanation, explain
from camkit.heads import CAMHeadWarning, HeadNotFoundError
from camkit.inputs import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from camkit.layers import LayerError, list_layers
from camkit.methods import describe_methods, list_methods, register
from camkit.targets import TopK

__all__ = [
    "explain", "Explainer", "Explanation", "TopK", "Preprocess", "list_methods", "describe_methods",
    "register", "list_layers", "LayerError", "HeadNotFoundError", "CAMHeadWarning", "IMAGENET_MEAN",
    "IMAGENET_STD", "__version__",
]
