"""Named settings of the explainer: ``camkit.explain(model, images, preset="recommended")``.

A preset fixes ``methods``, ``layers`` and ``fuse`` together (see :class:`camkit.Explainer`):

* ``"recommended"``, the default (what ``camkit.explain(model, images)`` gives when none of ``methods``,
  ``layers``, ``fuse`` and ``preset`` is given): BagCAMs at the last layer of the second deepest
  resolution (``layers="stage:-2|last"``: ``features.13`` of MobileNetV2, ``_blocks.10`` of
  EfficientNet-Lite0, ``layer3`` of a ResNet; the last spatial layer of a model with one resolution,
  a ViT), the best mean MaxBoxAccV2 of the table in ``docs/methods.md`` (``python
  examples/choose_default.py``): one rule for every model, chosen on the 50 annotated ImageNet dev
  images of two models (MobileNetV2 and EfficientNet-Lite0), not tuned per model, and not checked on
  a held-out test set;
* ``"classic"``: Grad-CAM at the last spatial layer, the default before the recommended one, and what
  ``methods`` gives when ``layers`` or ``fuse`` is given without it.

This module is data only: the engine reads :data:`PRESETS` through :func:`get_preset`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["Preset", "PRESETS", "DEFAULT_PRESET", "UNSET", "get_preset", "preset_setting"]


class _Unset:
    """The type of :data:`UNSET`."""

    def __repr__(self) -> str:
        return "UNSET"


#: the default of ``methods`` in :class:`camkit.Explainer`: not given (so an explicit ``"gradcam"`` is
#: told apart from the default)
UNSET = _Unset()
#: the preset of a call that gives none of ``methods``, ``layers``, ``fuse`` and ``preset``
DEFAULT_PRESET = "recommended"


@dataclass(frozen=True)
class Preset:
    """One named setting.

    Attributes:
        name: the preset's name.
        methods: the method names.
        layers: a layer selection as :class:`camkit.Explainer` takes it (``None``: the last spatial
            layer; ``"stage:K"``: the last layer of the ``K``-th resolution, negative from the deepest;
            ``"last-stages:N"``: that of each of the ``N`` deepest resolutions).
        fuse: the fusion rule (:func:`camkit.fuse`) over those layers, or ``None``.
        description: one line for ``--help`` and the docs.
    """

    name: str
    methods: Tuple[str, ...]
    layers: Optional[str]
    fuse: Optional[str]
    description: str


PRESETS = {
    "recommended": Preset(
        "recommended", ("bagcams",), "stage:-2|last", None,
        "BagCAMs at the last layer of the second deepest resolution (features.13 of MobileNetV2), the default"),
    "classic": Preset(
        "classic", ("gradcam",), None, None,
        "Grad-CAM at the last spatial layer (the default before the recommended one)"),
}


def get_preset(name) -> Preset:
    """The preset called ``name``; an unknown name raises ``ValueError`` listing the presets."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(map(repr, PRESETS))} "
                         f"(or give methods= and layers= yourself)")
    return PRESETS[name]


def preset_setting(preset, methods, layers, fuse):
    """``(preset, methods, layers, fuse)`` that :class:`camkit.Explainer` runs, given its arguments.

    ``preset=None``: :data:`DEFAULT_PRESET` when ``methods`` is :data:`UNSET` and ``layers`` and ``fuse``
    are ``None``, else no preset (``methods`` :data:`UNSET` becomes ``"gradcam"``). A named preset is
    refused with any of the other three given.
    """
    if preset is None and methods is UNSET and layers is None and fuse is None:
        preset = DEFAULT_PRESET
    if preset is None:
        return None, "gradcam" if methods is UNSET else methods, layers, fuse
    setting = get_preset(preset)
    given = [f"{name}={value!r}" for name, value, unset in
             (("methods", methods, UNSET), ("layers", layers, None), ("fuse", fuse, None)) if value is not unset]
    if given:
        raise ValueError(f"preset={preset!r} sets methods={setting.methods!r}, layers={setting.layers!r} and "
                         f"fuse={setting.fuse!r}; give the preset or {', '.join(given)}, not both")
    return preset, setting.methods, setting.layers, setting.fuse
