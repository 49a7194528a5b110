"""camkit: class activation maps for any PyTorch classifier.

The entry point is :func:`camkit.explain`; :class:`camkit.Explainer` is its reusable form.
Localization metrics that match wsolevaluation live in :mod:`camkit.metrics` (boxes in
:mod:`camkit.boxes`), streaming evaluation in :func:`camkit.evaluate` (:mod:`camkit.evaluation`), pictures in :mod:`camkit.viz`,
datasets in :mod:`camkit.data`, backbones and CI-CAM in :mod:`camkit.models`, the post-hoc causal
correction in :mod:`camkit.causal` and training in :mod:`camkit.train`.
"""

from camkit._version import __version__

from camkit.boxes import best_iou_per_threshold, box_iou, boxes_from_map, resize_boxes
from camkit.causal import CausalContext, fit_context
from camkit.evaluation import evaluate
from camkit.explain import Explainer, Explanation, explain
from camkit.heads import CAMHeadWarning, HeadNotFoundError
from camkit.inputs import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from camkit.layers import LayerError, list_layers
from camkit.methods import describe_methods, list_methods, register
from camkit.metrics import LocalizationAccuracy, MaxBoxAcc, PeakIoU, PxAP
from camkit.model_spec import LoadedModel, ModelSpecError, load_model
from camkit.targets import TopK
from camkit.viz import overlay

from camkit import data, models, train  # noqa: E402  (subpackages, usable after "import camkit")

__all__ = [
    "explain", "Explainer", "Explanation", "TopK", "Preprocess", "list_methods", "describe_methods",
    "register", "list_layers", "LayerError", "HeadNotFoundError", "CAMHeadWarning", "IMAGENET_MEAN",
    "IMAGENET_STD", "evaluate", "boxes_from_map", "box_iou", "resize_boxes", "best_iou_per_threshold",
    "MaxBoxAcc", "LocalizationAccuracy", "PxAP", "PeakIoU", "load_model", "LoadedModel",
    "ModelSpecError", "overlay", "CausalContext", "fit_context", "__version__",
]
