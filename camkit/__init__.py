"""camkit: class activation maps for any PyTorch classifier.

The entry point is :func:`camkit.explain`; :class:`camkit.Explainer` is its reusable form.
Localization metrics that match wsolevaluation live in :mod:`camkit.metrics` (boxes in
:mod:`camkit.boxes`), streaming evaluation in :func:`camkit.evaluate` (:mod:`camkit.evaluation`),
pictures in :mod:`camkit.viz`, datasets in :mod:`camkit.data`, backbones and CI-CAM in
:mod:`camkit.models`, the post-hoc causal correction in :mod:`camkit.causal` and training in
:mod:`camkit.train`.

This module is the top of the import graph: nothing in camkit imports it. Every name loads on first
use (``camkit.explain`` imports the engine then), so ``import camkit`` and ``camkit --help`` stay light.
"""
import importlib
import sys
import types

from camkit._version import __version__

#: every public name -> the module it lives in (a subpackage when the name is the module's). Nothing
#: is imported until first use, so ``import camkit`` (and ``camkit --help``) does not load torch.
_LAZY = {
    **dict.fromkeys(("Explainer", "Explanation", "explain"), "camkit.explain"),
    **dict.fromkeys(("best_iou_per_threshold", "box_iou", "boxes_from_map", "resize_boxes"), "camkit.boxes"),
    **dict.fromkeys(("CAMHeadWarning", "HeadNotFoundError"), "camkit.heads"),
    **dict.fromkeys(("IMAGENET_MEAN", "IMAGENET_STD", "Preprocess"), "camkit.inputs"),
    **dict.fromkeys(("LayerError", "list_layers"), "camkit.layers"),
    **dict.fromkeys(("describe_methods", "list_methods", "register"), "camkit.methods"),
    **dict.fromkeys(("LocalizationAccuracy", "MaxBoxAcc", "PeakIoU", "PxAP"), "camkit.metrics"),
    **dict.fromkeys(("LoadedModel", "ModelSpecError", "load_model"), "camkit.model_spec"),
    "TopK": "camkit.targets", "overlay": "camkit.viz",
    **dict.fromkeys(("BoxScoreTarget", "SegmentationTarget"), "camkit.dense_targets"),
    **dict.fromkeys(("AverageDrop", "DeletionInsertion", "ROAD"), "camkit.faithfulness"),
    "fuse": "camkit.fusion", "AugSmooth": "camkit.smoothing",
    "evaluate": "camkit.evaluation", "CausalContext": "camkit.causal", "fit_context": "camkit.causal",
    "data": "camkit.data", "models": "camkit.models", "train": "camkit.train", "causal": "camkit.causal",
    "evaluation": "camkit.evaluation", "bench": "camkit.bench", "distributed": "camkit.distributed",
    "viz": "camkit.viz", "methods": "camkit.methods", "metrics": "camkit.metrics", "boxes": "camkit.boxes",
}


class _Face(types.ModuleType):
    """The package's module type: ``camkit.explain`` is the function even after ``import camkit.explain``
    (which sets the submodule as the package's attribute; that assignment is ignored here)."""

    @property
    def explain(self):
        from camkit.explain import explain
        return explain

    @explain.setter
    def explain(self, value):
        pass


sys.modules[__name__].__class__ = _Face


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
    "explain", "Explainer", "Explanation", "TopK", "SegmentationTarget", "BoxScoreTarget", "Preprocess", "list_methods", "describe_methods",
    "register", "list_layers", "LayerError", "HeadNotFoundError", "CAMHeadWarning", "IMAGENET_MEAN",
    "IMAGENET_STD", "evaluate", "boxes_from_map", "box_iou", "resize_boxes", "best_iou_per_threshold",
    "MaxBoxAcc", "LocalizationAccuracy", "PxAP", "PeakIoU", "load_model", "LoadedModel",
    "ModelSpecError", "overlay", "CausalContext", "fit_context", "__version__", "fuse", "AugSmooth",
    "DeletionInsertion", "ROAD", "AverageDrop",
]
