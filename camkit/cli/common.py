"""What every ``camkit`` subcommand shares: the help formatter, the model and data flags, user errors.

A subcommand is a module of :mod:`camkit.cli` with ``HELP`` (one line for ``camkit --help``),
``DESCRIPTION``, ``EPILOG`` (examples), ``add_arguments(parser)`` and ``run(args) -> int``; it imports
torch and camkit's library modules only inside ``run``. Errors a user can fix (a bad flag value, a
missing file, an unknown method or layer) are raised as :class:`UsageError` or as the library's own
``ValueError``/``LookupError``/``OSError`` subclasses; :func:`camkit.cli.main` prints them as one line
on stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

__all__ = ["UsageError", "Formatter", "add_model_arguments", "load_model_from_args", "add_data_arguments",
           "split_names", "output_folder", "model_epilog", "resolve_device", "add_device_argument",
           "parse_method_options"]


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and the line breaks in help strings."""

    def _split_lines(self, text, width):
        return [line for part in text.splitlines() for line in
                (argparse.HelpFormatter._split_lines(self, part, width) or [""])]


def model_epilog(epilog: str) -> str:
    """``epilog`` followed by the list of model specifiers."""
    from camkit.constants import SPEC_FORMS

    return epilog.rstrip("\n") + f"\n\nmodel specifiers (--model):\n{SPEC_FORMS}\n"


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The shared model flags: ``--model --weights --num-classes --mean --std --image-size --device``."""
    parser.add_argument("--model", required=required, metavar="SPEC",
                        help="the model: torchvision:NAME, efficientnet-lite0, mobilenet_v2[-tf]:PATH, "
                             "module:function or checkpoint:PATH (see 'model specifiers' below)")
    parser.add_argument("--weights", metavar="PATH", default=None,
                        help="state_dict file for torchvision:NAME or module:function ('random' = untrained); "
                             "never downloaded")
    parser.add_argument("--num-classes", type=int, default=None, metavar="K",
                        help="class count when the weights do not tell it")
    parser.add_argument("--mean", type=float, nargs="+", default=None, metavar="M",
                        help="override the input normalisation mean (1 or 3 values)")
    parser.add_argument("--std", type=float, nargs="+", default=None, metavar="S",
                        help="override the input normalisation std (1 or 3 values)")
    parser.add_argument("--image-size", type=int, default=None, metavar="N",
                        help="override the square model input size (default: the model's, usually 224)")
    add_device_argument(parser)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``."""
    parser.add_argument("--device", default=None, metavar="DEV",
                        help="torch device, e.g. cpu or cuda:0 (default: cuda if available, else cpu)")


def resolve_device(name: Optional[str]):
    """The ``torch.device`` of ``--device`` (default cuda when available, else cpu), checked to exist."""
    import torch

    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _three(values, flag: str):
    if values is None:
        return None
    if len(values) not in (1, 3):
        raise UsageError(f"{flag} takes 1 or 3 values, got {len(values)}")
    return list(values) * (3 // len(values))


def load_model_from_args(args, device=None):
    """:func:`camkit.load_model` from the flags of :func:`add_model_arguments` (``device`` overrides ``--device``)."""
    from camkit.model_spec import load_model

    return load_model(args.model, weights=args.weights, num_classes=args.num_classes,
                      device=device if device is not None else resolve_device(args.device), mean=_three(args.mean, "--mean"),
                      std=_three(args.std, "--std"), image_size=args.image_size)


def add_data_arguments(parser: argparse.ArgumentParser, split: str = "test") -> None:
    """``--data SPEC`` and ``--metadata DIR``: the one grammar of :func:`camkit.data.open.open_dataset`."""
    from camkit.constants import DATA_FORMS

    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="synthetic[:KEY=VALUE,...], a folder with annotations.json, or a wsolevaluation "
                             "dataset root (see 'datasets' below)")
    parser.add_argument("--metadata", default=None, metavar="DIR",
                        help=f"wsolevaluation metadata folder (default DATA/metadata/{split})")
    parser.epilog = (parser.epilog or "").rstrip("\n") + f"\n\ndatasets (--data):\n{DATA_FORMS}\n"


BOX_RULE_HELP = ("how maps become boxes: wsol (the threshold sweep: MaxBoxAcc, default), or a rule that sets its "
                 "own threshold (single-threshold BoxAcc@30/50/70, their mean BoxAcc, GT-known/Top-k Loc at its "
                 "boxes): fixed:F (F in [0, 1]), pas, cicam, cicam-kept-mean")


def add_box_rule_argument(parser: argparse.ArgumentParser) -> None:
    """``--box-rule RULE`` (default ``wsol``) of the commands that score boxes against ground truth."""
    parser.add_argument("--box-rule", default="wsol", metavar="RULE", help=BOX_RULE_HELP)


def parse_box_rule(text: str):
    """The :class:`camkit.boxes.BoxRule` named by ``--box-rule``; a bad name is a :class:`UsageError`."""
    from camkit.boxes import box_rule
    try:
        return box_rule(text)
    except ValueError as error:
        raise UsageError(f"--box-rule: {error}") from None


def split_names(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (flags take space- or comma-separated names)."""
    if values is None:
        return None
    return [part for value in values for part in value.split(",") if part]


_WORDS = {"true": True, "false": False, "none": None}


def parse_method_options(items: Optional[Sequence[str]]) -> Optional[dict]:
    """``["cam.clamp_negative_weights=true", "bagcams.weighting=mean"]`` -> ``{"cam": {"clamp_negative_weights":
    True}, "bagcams": {"weighting": "mean"}}`` (``method_options`` of :class:`camkit.Explainer`).

    Values: ``true`` / ``false`` / ``none`` (any case), Python literals (``3``, ``0.5``, ``'a'``), else the
    text itself. ``None`` for no items. Raises :class:`UsageError` for an item not ``METHOD.OPTION=VALUE``
    or an option given twice; unknown methods and options are refused by the explainer, naming them.
    """
    import ast

    if not items:
        return None
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        method, dot, option = key.strip().partition(".")
        if not sep or not dot or not method or not option:
            raise UsageError(f"--method-options takes METHOD.OPTION=VALUE, e.g. cam.clamp_negative_weights=true; "
                             f"got {item!r}")
        text = text.strip()
        if text.lower() in _WORDS:
            value = _WORDS[text.lower()]
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
        if option in out.setdefault(method, {}):
            raise UsageError(f"--method-options gives {method}.{option} twice")
        out[method][option] = value
    return out


@contextlib.contextmanager
def output_folder(path) -> Iterator[Path]:
    """Create ``path`` for a command's outputs; remove it again if the command fails before writing to it.

    A folder that existed before is never removed; one created here is removed only while still empty.
    """
    folder = Path(path)
    existed = folder.exists()
    if existed and not folder.is_dir():
        raise UsageError(f"--out {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
        raise
