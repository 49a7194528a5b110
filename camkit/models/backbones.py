"""CAM-ready backbones: a spatial trunk, global average pooling and ONE ``nn.Linear`` head.

These are the variants the WSOL literature trains (wsolevaluation, Choe et al. 2020):

====================  ===========================================  ====================  ==========
name                  trunk                                         CAM layer             map @224
====================  ===========================================  ====================  ==========
``vgg16``             VGG16 conv1_1..conv5_3 (no pool5) +          ``extra``             14 x 14
                      3x3 conv 512->1024 + ReLU (``extra``)
``resnet50``          ResNet-50, layer3 and layer4 at stride 1     ``layer4``            28 x 28
                      (``large_feature_map=True``, the default);
                      ``large_feature_map=False``: layer4 stride 1  ``layer4``            14 x 14
``inception_v3``      InceptionV3 up to Mixed_6e (padded stem,     ``extra``             28 x 28
                      Mixed_6a at stride 1) + SPG's two 3x3 convs
                      768->1024->1024 + ReLU (``extra``)
``mobilenet_v2``      MobileNetV2 ``features``                     ``features``          7 x 7
``tiny``              4 conv blocks for CPU tests / synthetic data  ``block4``            S/4
====================  ===========================================  ====================  ==========

Every model ends in ``pool`` (``nn.AdaptiveAvgPool2d(1)``) and a linear head whose ``in_features`` equals
the CAM layer's channels, so ``camkit.explain`` finds the CAM head automatically. SPG/wsolevaluation's
InceptionV3 classifies with a 1x1 conv to K channels followed by GAP; that is the same function as GAP
followed by a linear layer (both are linear), so camkit uses the latter.

Each model has ``new_layer_prefixes``: the parameter-name prefixes that are not taken from ImageNet
pretraining (the head and the extra layers). Recipes train them at a higher learning rate.

Pretrained weights never download: ``pretrained`` is ``None``/``False`` (random init), a file path (a
torchvision-style state dict, optionally under ``"state_dict"``/``"model"``, ``module.`` prefixes are
stripped), or ``True`` (torchvision's local hub cache, ``torch.hub.get_dir()/checkpoints``). Keys of
the head and the extra layers are loaded only when their shapes match; a trunk key missing from the
file raises an error naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TinyCNN", "VGG16GAP", "ResNet50GAP", "InceptionV3GAP", "MobileNetV2GAP", "build_backbone",
    "list_backbones", "load_pretrained", "cam_layer",
]

Pretrained = Union[None, bool, str, Path]


class TinyCNN(nn.Module):
    """Four conv blocks + GAP + linear; for CPU tests and the synthetic benchmark.

    ``block1`` (S) -> pool -> ``block2`` (S/2) -> pool -> ``block3`` (S/4) -> ``block4`` (S/4) ->
    ``pool`` -> ``fc``. Each block is conv3x3 [+ BatchNorm] + ReLU. ``norm="none"`` drops BatchNorm,
    which makes results independent of how a batch is split across processes.

    Input ``(B, 3, S, S)``; output logits ``(B, num_classes)``.
    """

    new_layer_prefixes: Tuple[str, ...] = ("block1", "block2", "block3", "block4", "fc")
    cam_layer = "block4"

    def __init__(self, num_classes: int = 4, widths: Sequence[int] = (16, 32, 64, 64),
                 norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        channels = [3] + list(widths)
        for i in range(4):
            layers: List[nn.Module] = [nn.Conv2d(channels[i], channels[i + 1], 3, padding=1,
                                                 bias=norm == "none")]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(channels[i + 1]))
            layers.append(nn.ReLU(inplace=True))
            setattr(self, f"block{i + 1}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(x)
        x = self.block2(F.max_pool2d(x, 2))
        x = self.block3(F.max_pool2d(x, 2))
        x = self.block4(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class VGG16GAP(nn.Module):
    """VGG16 without pool5 + conv 512->1024 (3x3) + ReLU + GAP + linear. 224 input -> 14x14 maps.

    Modules: ``features`` (torchvision's ``vgg16().features[:30]``, same indices), ``extra``, ``pool``,
    ``fc``.
    """

    new_layer_prefixes = ("extra", "fc")
    cam_layer = "extra"

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        from torchvision.models import vgg16
        self.features = vgg16(weights=None).features[:30]      # drop pool5
        self.extra = nn.Sequential(nn.Conv2d(512, 1024, 3, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.extra(self.features(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNet50GAP(nn.Module):
    """ResNet-50 with layer4 at stride 1 (and layer3 too when ``large_feature_map``) + GAP + linear.

    224 input -> ``layer4`` 28x28 (large feature map) or 14x14. Module names are torchvision's
    (``conv1`` ... ``layer4``, ``fc``) so its weights load directly.
    """

    new_layer_prefixes = ("fc",)
    cam_layer = "layer4"

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = True) -> None:
        super().__init__()
        from torchvision.models import resnet50
        net = resnet50(weights=None)
        layers = [net.layer4] + ([net.layer3] if large_feature_map else [])
        for layer in layers:
            first = layer[0]
            first.conv2.stride = (1, 1)
            first.downsample[0].stride = (1, 1)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class InceptionV3GAP(nn.Module):
    """InceptionV3 up to Mixed_6e with SPG's extra layers + GAP + linear. 224 input -> 28x28 maps.

    As in the WSOL versions (SPG, wsolevaluation): the stem convs are padded (``Conv2d_1a_3x3`` and
    ``Conv2d_2a_3x3``/``Conv2d_4a_3x3`` padding 1, both max-pools padding 1), and ``Mixed_6a`` runs at
    stride 1 (its strided 3x3 convs get stride 1 and padding 1, its max-pool stride 1 and padding 1).
    ``extra`` = conv3x3 768->1024 + ReLU + conv3x3 1024->1024 + ReLU (SPG_A3_1b/2b). Module names of
    the trunk are torchvision's, so its ``inception_v3`` weights load directly.
    """

    new_layer_prefixes = ("extra", "fc")
    cam_layer = "extra"
    _trunk = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
              "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
              "Mixed_6e")

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        from torchvision.models import inception_v3
        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        for name in self._trunk:
            setattr(self, name, getattr(net, name))
        self.Conv2d_1a_3x3.conv.padding = (1, 1)
        self.Conv2d_2a_3x3.conv.padding = (1, 1)
        self.Conv2d_4a_3x3.conv.padding = (1, 1)
        for conv in (self.Mixed_6a.branch3x3.conv, self.Mixed_6a.branch3x3dbl_3.conv):
            conv.stride, conv.padding = (1, 1), (1, 1)
        self.extra = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)

    def _mixed_6a(self, x: torch.Tensor) -> torch.Tensor:
        m = self.Mixed_6a
        b3 = m.branch3x3(x)
        bd = m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([b3, bd, bp], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self._mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        x = self.extra(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class MobileNetV2GAP(nn.Module):
    """MobileNetV2 ``features`` + GAP + ``classifier`` (Dropout, Linear 1280->K). 224 -> 7x7 maps.

    Names equal torchvision's ``mobilenet_v2`` (``features.0`` ... ``features.18``, ``classifier.1``), so
    a torchvision state dict loads as is, head included when ``num_classes == 1000``.
    """

    new_layer_prefixes = ("classifier",)
    cam_layer = "features"

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2
        self.features = mobilenet_v2(weights=None).features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# name -> (class, torchvision weights enum name or None)
_BACKBONES: Dict[str, Tuple[Callable[..., nn.Module], Optional[str]]] = {
    "tiny": (TinyCNN, None),
    "vgg16": (VGG16GAP, "VGG16_Weights"),
    "resnet50": (ResNet50GAP, "ResNet50_Weights"),
    "inception_v3": (InceptionV3GAP, "Inception_V3_Weights"),
    "mobilenet_v2": (MobileNetV2GAP, "MobileNet_V2_Weights"),
}


def list_backbones() -> List[str]:
    """Names accepted by :func:`build_backbone`."""
    return sorted(_BACKBONES)


def cam_layer(model: nn.Module) -> str:
    """Name of the layer whose activations feed the GAP + linear head (the usual CAM layer)."""
    name = getattr(model, "cam_layer", None)
    if name is None:
        raise AttributeError(f"{type(model).__name__} has no cam_layer attribute; pass layers= explicitly")
    return name


def build_backbone(name: str, num_classes: int = 1000, pretrained: Pretrained = None,
                   **options) -> nn.Module:
    """A CAM-ready backbone by name (see :func:`list_backbones`), optionally with pretrained weights.

    ``options`` go to the model class (e.g. ``large_feature_map=False`` for ``resnet50``,
    ``norm="none"`` for ``tiny``). ``pretrained``: ``None``/``False``, a path, or ``True`` for
    torchvision's local cache (never downloads).
    """
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; available: {list_backbones()}")
    cls, weights_enum = _BACKBONES[name]
    model = cls(num_classes=num_classes, **options)
    if pretrained:
        if pretrained is True:
            if weights_enum is None:
                raise ValueError(f"backbone {name!r} has no published pretrained weights; "
                                 "pass pretrained=<path to a state dict> or None")
            path = _torchvision_cache_path(weights_enum)
        else:
            path = Path(pretrained)
        load_pretrained(model, path)
    return model


def _torchvision_cache_path(weights_enum: str) -> Path:
    import torchvision.models as tvm
    weights = getattr(tvm, weights_enum).IMAGENET1K_V1
    filename = weights.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights for {weights_enum} are not in torchvision's local cache ({path}); camkit "
            f"never downloads. Either download {weights.url} on a machine with network access and put it "
            f"at {path}, or pass pretrained='/path/to/state_dict.pth' (or --pretrained PATH).")
    return path


def load_pretrained(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load a state dict from ``path`` into ``model`` in place (see the module docstring's rules)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}; pass the path of a "
                                "torchvision-style state dict (.pth)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    own = model.state_dict()
    prefixes = tuple(getattr(model, "new_layer_prefixes", ()))

    def is_new(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    missing = [k for k in own if not is_new(k) and k not in state]
    if missing:
        raise KeyError(f"{path} lacks {len(missing)} trunk weights of {type(model).__name__}, e.g. "
                       f"{missing[:5]}; is it a state dict of the matching torchvision model?")
    wrong = [k for k in own if not is_new(k) and state[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"{path}: shape mismatch for {wrong[:5]} (file {state[wrong[0]].shape}, model "
                         f"{own[wrong[0]].shape})")
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(loadable, strict=False)
    return model
