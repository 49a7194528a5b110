"""Named box rules: how a score map becomes boxes, as one option everywhere camkit makes boxes.

A box rule is given as ``box_rule=`` to :class:`camkit.metrics.MaxBoxAcc`,
:class:`camkit.metrics.LocalizationAccuracy`, :func:`camkit.evaluate`,
:func:`camkit.evaluation.localization_evaluator`, :func:`camkit.bench.run_benchmark`,
:meth:`camkit.Explanation.boxes` and the ``--box-rule`` flag of ``camkit evaluate`` / ``benchmark`` / ``explain``:

* ``"wsol"``: wsolevaluation's threshold sweep (every ``tau`` of ``arange(0, 1, cam_curve_interval)``,
  :func:`camkit.boxes.boxes_from_map` at each, the best ``tau`` per IoU level). It needs ground-truth
  boxes to pick ``tau``, so it is a metric protocol, not a rule that boxes a map on its own.
* ``"fixed"`` or ``"fixed:F"`` (any fraction ``F`` in [0, 1], e.g. ``"fixed:0.5"``): one threshold,
  ``u > int(F * max(u))`` (:func:`camkit.boxes.boxes_fixed_threshold`, default ``F = 0.2``).
* ``"pas"`` (alias ``"percentile"``): Percentile as a Standard, ``u > tau * percentile(u, q)``
  (:func:`camkit.boxes.boxes_percentile_threshold`, ``tau = 0.35``, ``q = 90``; Bae et al. 2020).
* ``"cicam"``: the released CI-CAM rule (:func:`camkit.boxes.boxes_cicam`, ``seg_thr = 0.12``).
* ``"cicam-kept-mean"``: camkit's earlier CI-CAM-like rule (:func:`camkit.boxes.boxes_cicam_kept_mean`).
* a callable ``rule(score_map (H, W) float numpy array in [0, 1]) -> (n, 4)`` inclusive integer boxes.

Every rule but ``"wsol"`` sets its own threshold, so a metric scored with it has one threshold: it
reports the accuracy at that rule's boxes, with no sweep (see :class:`camkit.metrics.MaxBoxAcc`).

:func:`box_rule` turns any of these (with the rule's options, e.g. ``box_rule("pas", q=95)``) into a
:class:`BoxRule`, checking it first: an unknown name, a bad fraction, an unknown or bad option and a
callable that does not return ``(n, 4)`` boxes inside the map are refused with ``ValueError`` before
anything is evaluated (the rule is tried once on a small probe map).
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import numpy as np

from camkit.boxes.curves import best_iou_per_threshold
from camkit.boxes.iou import box_iou, validate_boxes
from camkit.boxes.threshold import (boxes_cicam, boxes_cicam_kept_mean, boxes_fixed_threshold,
                                    boxes_percentile_threshold)

__all__ = ["BOX_RULES", "BOX_RULE_NAMES", "BoxRule", "box_rule", "get_box_rule"]

#: The rules that box a map on their own: name -> ``rule(score_map, **options)``.
BOX_RULES = {"fixed": boxes_fixed_threshold, "pas": boxes_percentile_threshold,
             "percentile": boxes_percentile_threshold, "cicam": boxes_cicam,
             "cicam-kept-mean": boxes_cicam_kept_mean}

#: Every name ``box_rule=`` accepts (besides ``"fixed:F"`` and callables).
BOX_RULE_NAMES = ("wsol",) + tuple(BOX_RULES)

_FORMS = ("'wsol', 'fixed' or 'fixed:F' (F a fraction in [0, 1], e.g. 'fixed:0.5'), 'pas', 'percentile', "
          "'cicam', 'cicam-kept-mean', or a callable score_map (H, W) -> (n, 4) boxes")


def _probe_map() -> np.ndarray:
    """An 8 x 8 float64 map in [0, 1] with two blobs, for trying a rule once before it is used."""
    probe = np.zeros((8, 8))
    probe[1:4, 1:5] = 0.6
    probe[2, 2] = 1.0
    probe[5:7, 5:7] = 0.3
    return probe


class BoxRule:
    """A checked box rule (make it with :func:`box_rule`).

    Attributes:
        name: ``"wsol"``, the spec (``"fixed:0.5"``, ``"cicam"``) with the options given, if any
            (``"pas(q=95)"``), or the callable's ``__name__``; the rows' ``"box_rule"``.
        sweep: True for ``"wsol"`` (the metric sweeps the thresholds; there is no function).
        function: ``score_map -> boxes`` with the options bound; ``None`` for ``"wsol"``.
        options: the options bound (``{"fraction": 0.5}`` for ``"fixed:0.5"``).

    ``rule(score_map)`` returns the boxes as int64 ``(n, 4)`` (inclusive ``x0, y0, x1, y1``), checked to
    be whole, ordered and inside the map; ``ValueError`` naming the rule otherwise.
    """

    def __init__(self, name: str, function: Optional[Callable], options: Optional[dict] = None):
        self.name = name
        self.function = function
        self.options = dict(options or {})
        self.sweep = function is None

    def __call__(self, score_map) -> np.ndarray:
        if self.sweep:
            raise ValueError("box_rule 'wsol' is MaxBoxAcc's threshold sweep, which needs ground-truth boxes to "
                             "choose the threshold; to box a map on its own pick a rule: " + _FORMS)
        out = self.function(score_map.detach().cpu().numpy() if hasattr(score_map, "detach") else score_map)
        height, width = np.shape(score_map)[-2:]
        try:
            boxes = validate_boxes(out)
        except ValueError as error:
            raise ValueError(f"box rule {self.name!r} must return (n, 4) whole-pixel boxes x0, y0, x1, y1: "
                             f"{error}") from None
        if len(boxes) == 0:
            raise ValueError(f"box rule {self.name!r} returned no box; return [[0, 0, 0, 0]] for a map without "
                             "foreground, as camkit's rules do")
        outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] >= width) | (boxes[:, 3] >= height)
        if outside.any():
            raise ValueError(f"box rule {self.name!r} returned boxes outside the {height} x {width} map "
                             f"(inclusive pixel indices 0..W-1, 0..H-1): {boxes[outside].tolist()[:3]}")
        return boxes

    def columns(self, thresholds) -> int:
        """Columns of a metric's counts: one per threshold for the sweep, one for a rule."""
        return len(thresholds) if self.sweep else 1

    def curve(self, score_map, gt_boxes, thresholds, multi_contour) -> np.ndarray:
        """The best-IoU curve of one map: (T,) over ``thresholds`` for the sweep
        (:func:`camkit.boxes.best_iou_per_threshold`, V2 when ``multi_contour``), else (1,) :meth:`best_iou`."""
        if self.sweep:
            return best_iou_per_threshold(score_map, gt_boxes, thresholds, multi_contour)
        return self.best_iou(score_map, gt_boxes)

    def best_iou(self, score_map, gt_boxes) -> np.ndarray:
        """The best IoU (1,) float64 of this rule's boxes of ``score_map`` (H, W) with ``gt_boxes`` (g, 4):
        the max over boxes x GT boxes, inclusive "+1" areas (:func:`camkit.boxes.box_iou`)."""
        return np.asarray([box_iou(self(score_map), gt_boxes).max()], np.float64)

    def _config(self):
        """What the boxes depend on: the function and its options (so ``"fixed:0.5"`` equals ``"fixed"`` with
        ``fraction=0.5``, and ``"pas"`` equals ``"percentile"``)."""
        return self.function.key if isinstance(self.function, _Bound) else self.function

    def __eq__(self, other) -> bool:
        return isinstance(other, BoxRule) and self._config() == other._config()

    def __hash__(self) -> int:
        return hash(self._config())

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"BoxRule({self.name!r}{options})"


class _Bound:
    """``function(score_map, **options)`` with the options bound; comparable by (function, options)."""

    def __init__(self, function: Callable, options: dict):
        self.function, self.options = function, options
        self.key = (function, tuple(sorted(options.items())))

    def __call__(self, score_map):
        return self.function(score_map, **self.options)


def _fraction_of(spec: str) -> float:
    text = spec.partition(":")[2]
    try:
        fraction = float(text)
    except ValueError:
        fraction = None
    if fraction is None or not 0 <= fraction <= 1:
        raise ValueError(f"box rule {spec!r}: the fixed threshold must be a fraction in [0, 1] of the map's "
                         f"maximum, e.g. 'fixed:0.5', got {text!r}")
    return fraction


def box_rule(spec="wsol", **options) -> BoxRule:
    """The :class:`BoxRule` named by ``spec``, checked before use.

    Args:
        spec: ``"wsol"``, ``"fixed"``, ``"fixed:F"``, ``"pas"``, ``"percentile"``, ``"cicam"``,
            ``"cicam-kept-mean"``, a callable ``score_map (H, W) -> (n, 4)``, or a :class:`BoxRule`
            (returned as it is, without options).
        options: the named rule's options (``fraction``, ``multi_contour`` for ``"fixed"``; ``tau``, ``q``,
            ``multi_contour`` for ``"pas"``; ``seg_thr`` for the CI-CAM rules); none for ``"wsol"``, a
            callable or a :class:`BoxRule`.

    Raises:
        ValueError: an unknown name, a bad fraction, an option the rule does not take or a bad option
            value, or a rule (a callable) that does not return ``(n, 4)`` boxes inside a probe map.
    """
    if isinstance(spec, BoxRule):
        if options:
            raise ValueError(f"{spec!r} already has its options; got more: {sorted(options)}")
        return spec
    if callable(spec) and not isinstance(spec, str):
        if options:
            raise ValueError(f"a callable box rule takes no options (got {sorted(options)}); bind them yourself, "
                             "e.g. with functools.partial")
        rule = BoxRule(getattr(spec, "__name__", type(spec).__name__), spec)
    elif isinstance(spec, str) and spec == "wsol":
        if options:
            raise ValueError(f"box_rule 'wsol' (the threshold sweep) takes no options, got {sorted(options)}; "
                             "its grid is cam_curve_interval, its boxes multi_contour")
        return BoxRule("wsol", None)
    elif isinstance(spec, str) and spec.startswith("fixed:"):
        if "fraction" in options:
            raise ValueError(f"box rule {spec!r} gives the fraction in its name; do not pass fraction= too")
        bound = {"fraction": _fraction_of(spec), **options}
        rule = BoxRule(_named(spec, options), _bound(boxes_fixed_threshold, bound, spec), bound)
    elif isinstance(spec, str) and spec in BOX_RULES:
        rule = BoxRule(_named(spec, options), _bound(BOX_RULES[spec], options, spec), options)
    else:
        raise ValueError(f"unknown box rule {spec!r}; give {_FORMS}")
    try:
        rule(_probe_map())
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith("box rule") else f"box rule {rule.name!r}: {message}") from None
    return rule


def _named(spec: str, options: dict) -> str:
    """The rule's name in tables: ``spec``, with its options when given (``"pas(q=95)"``)."""
    return spec + ("(" + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")" if options else "")


def _bound(function: Callable, options: dict, spec: str) -> _Bound:
    """``function`` with ``options`` bound, after checking that it takes them."""
    accepted = [name for name in inspect.signature(function).parameters if name != "score_map"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"box rule {spec!r} has no option(s) {', '.join(map(repr, unknown))}; its options are "
                         f"{', '.join(accepted)}")
    return _Bound(function, dict(options))


def get_box_rule(name):
    """The function registered as ``name`` in :data:`BOX_RULES` (``rule(score_map (H, W), **options)``).

    Raises ``ValueError`` naming the known rules for an unknown name (use :func:`box_rule` for the full
    grammar: ``"wsol"``, ``"fixed:F"``, callables).
    """
    if not isinstance(name, str) or name not in BOX_RULES:
        raise ValueError(f"unknown box rule {name!r}; known rules: {', '.join(sorted(BOX_RULES))}")
    return BOX_RULES[name]
