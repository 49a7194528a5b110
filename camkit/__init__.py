"""camkit: class activation maps for any PyTorch classifier.

The entry point is :func:`camkit.explain`; :class:`camkit.Explainer` is its reusable form.
Localization metrics that match wsolevaluation live in :mod:`camkit.metrics` (boxes in
:mod:`camkit.boxes`), streaming evaluation in :func:`camkit.evaluate` (:mod:`camkit.evaluation`),
pictures in :mod:`camkit.viz`, datasets in :mod:`camkit.data`, backbones and CI-CAM in
:mod:`camkit.models`, the post-hoc causal correction in :mod:`camkit.causal` and training in
:mod:`camkit.train`.

This module is the top of the import graph: nothing in camkit imports it. The engine's names are
imported here; the heavier rooms (training, models, datasets, the causal correction, evaluation)
load on first use, so ``import camkit`` stays light.
"""
import importlib

from camkit._version import __version__
from camkit.boxes import best_iou_per_threshold, box_iou, boxes_from_map, resize_boxes
from camkit.explain import Explainer, Explanation, explain
from camkit.fusion import fuse
from camkit.heads import CAMHeadWarning, HeadNotFoundError
from camkit.inputs import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from camkit.layers import LayerError, list_layers
from camkit.methods import describe_methods, list_methods, register
from camkit.metrics import AverageDrop, DeletionInsertion, LocalizationAccuracy, MaxBoxAcc, PeakIoU, PxAP, ROAD
from camkit.smoothing import AugSmooth
from camkit.model_spec import LoadedModel, ModelSpecError, load_model
from camkit.targets import TopK
from camkit.viz import overlay

#: names loaded on first access: ``name -> module`` (a subpackage when the name is the module's)
_LAZY = {"evaluate": "camkit.evaluation", "CausalContext": "camkit.causal", "fit_context": "camkit.causal",
         "data": "camkit.data", "models": "camkit.models", "train": "camkit.train", "causal": "camkit.causal",
         "evaluation": "camkit.evaluation", "bench": "camkit.bench", "distributed": "camkit.distributed"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'camkit' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if _LAZY[name] == f"camkit.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "explain", "Explainer", "Explanation", "TopK", "Preprocess", "list_methods", "describe_methods",
    "register", "list_layers", "LayerError", "HeadNotFoundError", "CAMHeadWarning", "IMAGENET_MEAN",
    "IMAGENET_STD", "evaluate", "boxes_from_map", "box_iou", "resize_boxes", "best_iou_per_threshold",
    "MaxBoxAcc", "LocalizationAccuracy", "PxAP", "PeakIoU", "load_model", "LoadedModel",
    "ModelSpecError", "overlay", "CausalContext", "fit_context", "__version__", "fuse", "AugSmooth",
    "DeletionInsertion", "ROAD", "AverageDrop",
]
