"""``open_dataset(spec)``: the one ``--data`` grammar of every camkit command.

``spec`` is one of:

* ``synthetic`` or ``synthetic:KEY=VALUE,...``: camkit's synthetic WSOL benchmark
  (:func:`camkit.data.synthetic.make_synthetic`; keys are its arguments, e.g.
  ``synthetic:num_images=2000,habitat_p=0.8,image_size=64``). The keys not given take the
  learnable benchmark setting :data:`camkit.data.synthetic.LEARNABLE` (24 classes at 48x48) and
  ``num_images`` :data:`SYNTHETIC_TRAIN_IMAGES` (3000), not ``make_synthetic``'s own small defaults. The ``"test"`` split uses the next seed
  (``seed + 1``), uniform context unless ``context`` is given, and at most 1000 images, so that it
  measures localisation without the habitat shortcut and never overlaps the training split. A key
  given twice or not an argument of ``make_synthetic`` is refused (a folder named ``synthetic`` is
  given as ``./synthetic``).
* ``DIR`` holding ``annotations.json``: an annotated image folder (the ``imagenet-val-dev50`` format,
  :class:`camkit.data.wsol.AnnotatedFolderDataset`).
* ``DIR``, a wsolevaluation dataset root: images under ``DIR``, the four metadata files in
  ``metadata`` (default ``DIR/metadata/<split>``; :class:`camkit.data.wsol.WSOLDataset`).

Items are dicts with ``"image"``, ``"label"``, ``"boxes"`` ``(g, 4)`` (inclusive ``x0, y0, x1, y1`` at
the image's resolution) and, for mask datasets, ``"mask"`` ``(S, S)`` (1 object, 0 background, 255
ignored). With ``normalize=(mean, std)`` images are ``(3, S, S)`` float tensors resized to
``image_size`` and normalised (the evaluation form); with ``normalize=None`` they are left for a
training pipeline: synthetic images stay uint8 at their own size, files are resized to ``image_size``
in ``[0, 1]``.
"""
from __future__ import annotations

import ast
import inspect
import numbers
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from camkit.constants import DATA_FORMS  # noqa: F401  (re-exported; torch-free for the CLI's help)
from camkit.data.views import EvaluationView

__all__ = ["open_dataset", "parse_options", "num_classes_of", "DATA_FORMS"]

MAX_SYNTHETIC_TEST_IMAGES = 1000
#: ``num_images`` of a ``synthetic`` spec that does not give it (the training split).
SYNTHETIC_TRAIN_IMAGES = 3000
DATA_FORMS_SHORT = "synthetic[:KEY=VALUE,...], an annotated folder or a wsolevaluation root"


def parse_options(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``["a=1", "b=x,y"]`` -> ``{"a": 1, "b": ("x", "y")}``; values are Python literals when they parse.

    Dashes in keys become underscores (``num-images`` is ``num_images``).
    """
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        key = key.strip().replace("-", "_")
        if key in out:
            raise ValueError(f"{key} is given twice ({item!r}); give each KEY once")
        out[key] = _literal(value.strip())
    return out


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if "," in text:
            return tuple(_literal(t) for t in text.split(","))
        return text


def _synthetic_options(spec: str) -> Dict[str, Any]:
    body = spec.partition(":")[2]
    # split on the commas that start a new KEY=VALUE, so that tuple values (scale_range=0.1,0.2) survive
    items: List[str] = []
    for part in (p for p in body.split(",") if p):
        if "=" in part or not items:
            items.append(part)
        else:
            items[-1] += "," + part
    return parse_options(items)


def open_dataset(spec: str, *, split: str = "test", metadata=None, image_size: int = 224,
                 normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None):
    """The dataset named by ``spec`` (see the module docstring for the grammar).

    Args:
        spec: ``synthetic[:KEY=VALUE,...]``, an annotated folder, or a wsolevaluation root.
        split: ``"train"`` or ``"test"``: the synthetic split and the default metadata folder.
        metadata: the wsolevaluation metadata folder (only with a dataset root).
        image_size: S, the side the file images are resized to (no crop).
        normalize: ``(mean, std)`` for the evaluation form; ``None`` leaves images for a training
            pipeline.

    Returns:
        A map-style dataset (``len`` and integer indexing) of item dicts; ``class_names`` where known.

    Raises:
        ValueError: a spec that names none of the forms, a synthetic key that is unknown or given twice,
            a bad synthetic value (the message starts with the spec), ``metadata`` with a synthetic
            spec, or a bad ``split``, ``image_size`` or ``normalize``.
        FileNotFoundError: a folder (or ``metadata`` folder) that does not exist or holds neither form.
        MetadataError: malformed metadata or annotations (the message names the file and line).
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string or a path ({DATA_FORMS_SHORT}), got {type(spec).__name__}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    normalize = _checked_normalize(normalize)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        if metadata is not None:
            raise ValueError("--metadata applies to a wsolevaluation dataset root, not to 'synthetic'")
        return _open_synthetic(spec, split, normalize)
    root = Path(spec)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {spec!r} is not an existing folder nor 'synthetic[:KEY=VALUE,...]'")
    from camkit.data.wsol import AnnotatedFolderDataset, WSOLDataset, WSOLEvalTransform

    mean, std = normalize if normalize is not None else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    transform = WSOLEvalTransform(size=image_size, mean=mean, std=std)
    if metadata is None and (root / "annotations.json").is_file():
        return AnnotatedFolderDataset(root, transform=transform)
    if metadata is not None and not Path(metadata).is_dir():
        raise FileNotFoundError(f"--metadata {str(metadata)!r} is not an existing folder; give the folder with "
                                f"image_ids.txt, class_labels.txt, image_sizes.txt and localization.txt")
    meta = Path(metadata) if metadata is not None else root / "metadata" / split
    if not meta.is_dir():
        raise FileNotFoundError(
            f"--data {spec!r}: no annotations.json in the folder and no wsolevaluation metadata folder at "
            f"{meta}; pass --metadata DIR (the folder with image_ids.txt, class_labels.txt, "
            f"image_sizes.txt, localization.txt)")
    return WSOLDataset(root, meta, transform=transform)


def _checked_normalize(normalize):
    """``None`` or ``(mean, std)`` with 3 values each (1 value means all channels) and std > 0."""
    if normalize is None:
        return None
    from camkit.inputs import _three

    if not isinstance(normalize, (list, tuple)) or len(normalize) != 2:
        raise ValueError(f"normalize must be None or (mean, std), got {normalize!r}")
    mean, std = _three("mean", normalize[0]), _three("std", normalize[1])
    if min(std) <= 0:
        raise ValueError(f"normalize std must be positive, got {std}")
    return mean, std


#: make_synthetic arguments that do not name a split (and so are not --data keys).
_NOT_SYNTHETIC_KEYS = ("return_layers", "chunk_size")


def _open_synthetic(spec: str, split: str, normalize):
    from camkit.data.synthetic import LEARNABLE, make_synthetic

    try:
        options = _synthetic_options(spec)
    except ValueError as error:
        raise ValueError(f"--data {spec!r}: {error}; the form is synthetic:KEY=VALUE,...") from None
    keys = [k for k in inspect.signature(make_synthetic).parameters if k not in _NOT_SYNTHETIC_KEYS]
    unknown = [k for k in options if k not in keys]
    if unknown:
        raise ValueError(f"--data {spec!r}: unknown key(s) {unknown}; the keys are {', '.join(keys)}")
    options = {**LEARNABLE, "num_images": SYNTHETIC_TRAIN_IMAGES, **options}
    if split == "test":
        options.setdefault("context", "uniform")
        seed, count = options.get("seed", 0), options.get("num_images", MAX_SYNTHETIC_TEST_IMAGES)
        if isinstance(seed, int) and not isinstance(seed, bool):   # else make_synthetic refuses it
            options["seed"] = seed + 1
        if isinstance(count, int) and not isinstance(count, bool):
            options["num_images"] = min(count, MAX_SYNTHETIC_TEST_IMAGES)
    try:
        dataset = make_synthetic(**options)
    except (TypeError, ValueError) as error:
        raise type(error)(f"--data {spec!r}: {error}") from None
    return dataset if normalize is None else EvaluationView(dataset, None, *normalize)


def num_classes_of(dataset) -> int:
    """The number of classes of a dataset from :func:`open_dataset` (``num_classes``, else max label + 1)."""
    if getattr(dataset, "num_classes", None) is not None:
        return int(dataset.num_classes)
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, dict):
        labels = labels.values()
    if labels is None:
        labels = [int(r["label"]) for r in getattr(dataset, "records", [])]
    labels = [int(label) for label in labels]
    if not labels:
        raise ValueError("the dataset has no labels; pass num_classes explicitly")
    return max(labels) + 1
