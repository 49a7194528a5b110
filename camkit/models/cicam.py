"""CI-CAM (Shao et al., ACM MM 2021): non-local blocks, the causal context pool, and the two-branch model.

CI-CAM treats the context that co-occurs with an object ("fish in water") as a confounder and applies
a backdoor adjustment: a **causal context pool** ``Q`` ``(N, h, w)`` keeps one context map per class,
and the backbone feature ``F`` is enhanced with the context of the predicted class before the
"down" (de-confounded) branch classifies it::

    F ──GAP──► shared linear ──► up logits ──► c* = argmax (top-1)
    │
    └─► F_e = F * (1 + Conv1x1_{N->C}(onehot(c*) x Q[c*]))  ──GAP──► shared linear ──► down logits

Training loss ``CE(up) + CE(down)``; at test time the down branch is used and its class maps
``W . F_e`` (no bias) are combined over the class ranking (:mod:`camkit.methods.combinational`).

Using a CI-CAM model with :func:`camkit.explain`: its forward returns a dict; pass ``output="down"``
(the default ``output["logits"]`` is the same tensor). The module ``model.enhanced`` (an identity)
outputs ``F_e``, so ``layers="enhanced"`` (also the last spatial layer) gives the down branch's maps
for every plain method (CAM, Grad-CAM, ...), and ``methods="causal"`` its combinational CAM.

Differences from the released code (documented, deliberate):

* ``Q`` is a registered buffer, saved in ``state_dict`` (the release keeps it outside the model and
  saves it in a separate file).
* Under ``torch.distributed`` the per-iteration accumulation ``T`` is summed over processes before the
  update, so every process holds the same ``Q`` and N processes with global batch B equal one process
  with batch B.
* If the feature size at run time differs from ``Q``'s (another input size), ``Q[c*]`` is resized
  bilinearly for the enhancement and class maps are resized to ``Q``'s size for the update; a pool
  that was never updated (all zeros) instead adopts the feature size of its first update, and
  ``load_state_dict`` adopts the saved pool's size.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from camkit.distributed import all_reduce_sum

__all__ = [
    "NonLocalBlock", "CausalContextPool", "CICAM", "standardize_per_class", "correct_class_sum",
    "vgg16_cicam_features", "cicam_vgg16", "CICAM_OUTPUT", "BackboneTrunk", "build_cicam",
]

#: Use ``camkit.explain(model, x, output=CICAM_OUTPUT)`` on a :class:`CICAM` (the down branch).
CICAM_OUTPUT = "down"


class NonLocalBlock(nn.Module):
    """Self-attention block with a zero-initialised BatchNorm, so the block starts as the identity.

    ``q, k``: 1x1 convs ``C -> C // reduction``; ``v``: 1x1 conv ``C -> C``;
    ``A = softmax(q^T k)`` over the last axis, unscaled, ``(B, hw, hw)``; ``y = v A^T``;
    ``out = x + BN(Conv1x1(y))`` with the BatchNorm's ``gamma = beta = 0`` at init.

    Input and output: ``(B, C, h, w)``.
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.mix = nn.Conv2d(channels, channels, 1)
        self.norm = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2)                                    # (B, C', n)
        k = self.key(x).flatten(2)                                      # (B, C', n)
        v = self.value(x).flatten(2)                                    # (B, C, n)
        attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)        # (B, n, n)
        y = (v @ attention.transpose(1, 2)).view(b, c, h, w)
        return x + self.norm(self.mix(y))


def standardize_per_class(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``BatchNorm2d(N)`` on a batch of one, ``gamma = 1``, ``beta = 0``: ``(N, h, w) -> (N, h, w)``.

    Each class channel is standardised over its ``h*w`` positions with the biased variance:
    ``(x - mean) / sqrt(var + eps)``. A constant channel becomes zeros.
    """
    return F.batch_norm(maps.unsqueeze(0), None, None, training=True, eps=eps)[0]


def correct_class_sum(class_maps: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The per-iteration accumulation ``T`` ``(N, h, w)``: ``T[y_i] += class_maps[i, y_i]`` for every
    sample whose top-1 (``logits`` ``(B, N)``) equals its label ``y_i`` ``(B,)``; others add nothing.

    ``class_maps``: ``(B, N, h, w)``.
    """
    b, n, h, w = class_maps.shape
    labels = labels.to(device=class_maps.device, dtype=torch.long)
    correct = logits.argmax(dim=1) == labels
    rows = torch.arange(b, device=class_maps.device)
    own = class_maps[rows, labels] * correct.to(class_maps.dtype).view(b, 1, 1)   # (B, h, w)
    total = class_maps.new_zeros(n, h, w)
    return total.index_add_(0, labels, own)


class CausalContextPool(nn.Module):
    """The causal context pool ``Q`` ``(N, h, w)``, its update rule, and the feature enhancement.

    ``Q`` (buffer ``pool``) starts at zeros and is saved with the model. One update per training
    iteration (no gradient flows through it)::

        T = correct_class_sum(up class maps, up logits, labels)       # correct samples only
        Q <- BN(Q + update_rate * BN(T))                               # BN = standardize_per_class

    Enhancement, with ``c*`` ``(B,)`` the up branch's top-1 class::

        A   = Conv1x1_{N->C}(onehot(c*) x Q[c*])  (with bias)   = W[:, c*] Q[c*] + b     (B, C, h, w)
        F_e = F * (1 + A)

    Args:
        num_classes: ``N``.
        channels: ``C``, the feature channels.
        size: ``(h, w)`` of the feature map (and of ``Q``).
        update_rate: ``lambda`` (0.01 in CI-CAM).
        eps: the BatchNorm epsilon (1e-5).
        sync: sum ``T`` over ``torch.distributed`` processes before updating (when initialised).
    """

    def __init__(self, num_classes: int, channels: int, size: Union[int, Tuple[int, int]],
                 update_rate: float = 0.01, eps: float = 1e-5, sync: bool = True):
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.num_classes, self.channels = int(num_classes), int(channels)
        self.update_rate, self.eps, self.sync = float(update_rate), float(eps), bool(sync)
        self.register_buffer("pool", torch.zeros(self.num_classes, int(h), int(w)))
        self.projection = nn.Conv2d(self.num_classes, self.channels, 1, bias=True)

    @property
    def size(self) -> Tuple[int, int]:
        return tuple(self.pool.shape[1:])

    @torch.no_grad()
    def update(self, class_maps: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One update of ``Q`` from the up branch; returns the accumulation ``T`` ``(N, h, w)``.

        ``class_maps`` ``(B, N, h, w)`` (``W . F``, no bias), ``logits`` ``(B, N)``, ``labels`` ``(B,)``.
        """
        if class_maps.shape[1] != self.num_classes:
            raise ValueError(f"class maps have {class_maps.shape[1]} classes; the pool holds {self.num_classes}")
        class_maps = class_maps.detach().to(self.pool.dtype)
        if tuple(class_maps.shape[2:]) != self.size and not bool(self.pool.any()):
            # a pool that was never updated holds no information: adopt the feature size
            self.pool = self.pool.new_zeros(self.num_classes, *class_maps.shape[2:])
        if tuple(class_maps.shape[2:]) != self.size:
            class_maps = F.interpolate(class_maps, size=self.size, mode="bilinear", align_corners=False)
        total = correct_class_sum(class_maps, logits.detach(), labels)
        if self.sync:
            total = all_reduce_sum(total)
        new = standardize_per_class(self.pool + self.update_rate * standardize_per_class(total, self.eps), self.eps)
        self.pool.copy_(new)
        return total

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        saved = state_dict.get(prefix + "pool")
        if isinstance(saved, torch.Tensor) and saved.dim() == 3 and saved.shape[0] == self.num_classes \
                and saved.shape != self.pool.shape:
            self.pool = self.pool.new_zeros(saved.shape)       # a pool saved at another feature size
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def attention(self, classes: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """``A = Conv1x1(onehot(c*) x Q[c*])`` ``(B, C, h, w)`` for classes ``c*`` ``(B,)``."""
        context = self.pool[classes.to(device=self.pool.device, dtype=torch.long)]    # (B, h, w) copy
        if size is not None and tuple(size) != self.size:
            context = F.interpolate(context.unsqueeze(1), size=tuple(size), mode="bilinear",
                                    align_corners=False).squeeze(1)
        weight = self.projection.weight[:, :, 0, 0]                                    # (C, N)
        columns = weight.t()[classes]                                                  # (B, C)
        return columns[:, :, None, None] * context[:, None] + self.projection.bias.view(1, -1, 1, 1)

    def forward(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``F_e = F * (1 + A)``: ``(B, C, h, w)``, classes ``(B,)`` -> ``(B, C, h, w)``."""
        if features.shape[1] != self.channels:
            raise ValueError(f"features have {features.shape[1]} channels; the context pool was built for "
                             f"{self.channels}")
        a = self.attention(classes, features.shape[2:]).to(features.dtype)
        return features * (1 + a)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, channels={self.channels}, size={self.size}, "
                f"update_rate={self.update_rate}")


class CICAM(nn.Module):
    """A two-branch CI-CAM classifier around any feature extractor ``images -> F (B, C, h, w)``.

    Modules: ``features`` (the backbone, e.g. :func:`vgg16_cicam_features`), ``context``
    (:class:`CausalContextPool`), ``enhanced`` (identity whose output is ``F_e``: hook this layer for
    the down branch's maps), ``classifier`` (``nn.Linear(C, N)``, shared by both branches).

    ``forward(images, labels=None)`` returns a dict:

    * ``"logits"`` / ``"down"``: down-branch logits ``(B, N)`` (the test-time prediction);
    * ``"up"``: up-branch logits ``(B, N)``;
    * ``"features"``: ``F``; ``"enhanced"``: ``F_e`` ``(B, C, h, w)``.

    When the model is in training mode and ``labels`` ``(B,)`` are given, the pool is updated after both
    branches are computed (the enhancement of this batch uses the previous ``Q``, as in the released
    code). :meth:`update_context` does the same from an output dict.

    Args:
        features: the backbone module.
        num_classes: ``N``.
        channels, feature_size: ``C`` and ``(h, w)`` of ``F``; inferred from one forward of a
            ``(1, 3, input_size, input_size)`` zero image when omitted.
        update_rate: the pool's ``lambda``.
        combination: default combination weights of the ``causal`` method (CI-CAM's released code:
            ``"cicam-quadratic"``, see :mod:`camkit.methods.combinational`).
        new_layer_prefixes: parameter name prefixes not taken from a pretrained network (for
            :func:`camkit.train.recipes.pretrained_and_new_groups`).
    """

    def __init__(self, features: nn.Module, num_classes: int, channels: Optional[int] = None,
                 feature_size: Optional[Union[int, Tuple[int, int]]] = None, input_size: int = 224,
                 update_rate: float = 0.01, combination="cicam-quadratic",
                 new_layer_prefixes: Sequence[str] = ("context", "classifier")):
        super().__init__()
        self.features = features
        if channels is None or feature_size is None:
            c, size = _probe_features(features, input_size)
            channels = c if channels is None else channels
            feature_size = size if feature_size is None else feature_size
        self.context = CausalContextPool(num_classes, channels, feature_size, update_rate=update_rate)
        self.enhanced = nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)
        self.combination = combination
        self.new_layer_prefixes = tuple(new_layer_prefixes)

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        feats = self.features(images)
        if feats.dim() != 4:
            raise ValueError(f"the CI-CAM backbone must return a spatial feature map (B, C, h, w); got shape "
                             f"{tuple(feats.shape)}. Remove its pooling/classifier layers.")
        up = self.classifier(feats.mean(dim=(2, 3)))
        top1 = up.detach().argmax(dim=1)
        enhanced = self.enhanced(self.context(feats, top1))
        down = self.classifier(enhanced.mean(dim=(2, 3)))
        output = {"logits": down, "down": down, "up": up, "features": feats, "enhanced": enhanced}
        if labels is not None and self.training:
            self.update_context(output, labels)
        return output

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``W . F`` without bias: ``(B, C, h, w) -> (B, N, h, w)``."""
        return torch.einsum("kc,bchw->bkhw", self.classifier.weight.to(features.dtype), features)

    @torch.no_grad()
    def update_context(self, output: Dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Update the pool from a forward's output (``"features"``, ``"up"``) and labels ``(B,)``."""
        return self.context.update(self.class_maps(output["features"].detach()), output["up"], labels)


def _probe_features(features: nn.Module, input_size: int) -> Tuple[int, Tuple[int, int]]:
    parameter = next(features.parameters(), None)
    device = parameter.device if parameter is not None else None
    dtype = parameter.dtype if parameter is not None else torch.float32
    modes = {m: m.training for m in features.modules()}
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, 3, input_size, input_size, device=device, dtype=dtype))
    finally:
        for module, mode in modes.items():
            module.training = mode
    if out.dim() != 4:
        raise ValueError(f"the CI-CAM backbone must return (B, C, h, w); it returned {tuple(out.shape)}")
    return out.shape[1], tuple(out.shape[2:])


# VGG16 configuration: channels per conv, "M" = max pool.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def vgg16_cicam_features(variant: str = "cub", weights: Optional[Union[str, Dict[str, torch.Tensor]]] = None,
                         negative_slope: float = 0.2) -> nn.Sequential:
    """CI-CAM's VGG16 feature extractor: ``(B, 3, H, W) -> (B, C, H/16, W/16)``.

    VGG16's 13 convs with ``LeakyReLU(0.2)``, pool5 removed (512x14x14 at 224). ``variant="cub"``:
    non-local blocks after pool2 (128 ch), pool3 (256), pool4 (512) and conv5_3 (512); C = 512.
    ``variant="imagenet"``: no block after pool2, and two extra 3x3 convs 512->1024->1024 with
    LeakyReLU at the end; C = 1024.

    Module names: ``conv1_1``, ``relu1_1``, ..., ``pool4``, ``nonlocal2`` ... ``nonlocal5``, ``conv6``,
    ``conv7``. ``weights``: a path to (or a loaded) torchvision ``vgg16`` state dict; its 13
    ``features.*`` convs are copied in order (never downloaded).
    """
    if variant not in ("cub", "imagenet"):
        raise ValueError(f"variant must be 'cub' or 'imagenet', got {variant!r}")
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    block, index, in_ch = 1, 1, 3
    blocks_after = {2: 128, 3: 256, 4: 512} if variant == "cub" else {3: 256, 4: 512}
    for item in _VGG16:
        if item == "M":
            layers[f"pool{block}"] = nn.MaxPool2d(2, 2)
            if block in blocks_after:
                layers[f"nonlocal{block}"] = NonLocalBlock(blocks_after[block])
            block, index = block + 1, 1
            continue
        layers[f"conv{block}_{index}"] = nn.Conv2d(in_ch, item, 3, padding=1)
        layers[f"relu{block}_{index}"] = nn.LeakyReLU(negative_slope)
        in_ch, index = item, index + 1
    layers["nonlocal5"] = NonLocalBlock(512)
    if variant == "imagenet":
        layers["conv6"] = nn.Conv2d(512, 1024, 3, padding=1)
        layers["relu6"] = nn.LeakyReLU(negative_slope)
        layers["conv7"] = nn.Conv2d(1024, 1024, 3, padding=1)
        layers["relu7"] = nn.LeakyReLU(negative_slope)
    features = nn.Sequential(layers)
    if weights is not None:
        _load_vgg16_convs(features, weights)
    return features


def _load_vgg16_convs(features: nn.Sequential, weights) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True) if not isinstance(weights, dict) else weights
    keys = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("features.") and k.endswith(".weight")},
                  key=lambda k: int(k.split(".")[1]))
    convs = [m for name, m in features.named_children() if name.startswith("conv") and "_" in name]
    if len(keys) != len(convs):
        raise ValueError(f"expected a torchvision vgg16 state dict with 13 conv layers under 'features.'; "
                         f"found {len(keys)}")
    with torch.no_grad():
        for key, conv in zip(keys, convs):
            if state[key + ".weight"].shape != conv.weight.shape:
                raise ValueError(f"{key}.weight has shape {tuple(state[key + '.weight'].shape)}, expected "
                                 f"{tuple(conv.weight.shape)}; is this a vgg16 (not vgg16_bn) state dict?")
            conv.weight.copy_(state[key + ".weight"])
            conv.bias.copy_(state[key + ".bias"])


def cicam_vgg16(num_classes: int = 200, variant: str = "cub", weights=None, input_size: int = 224,
                update_rate: float = 0.01, combination="cicam-quadratic") -> CICAM:
    """CI-CAM on VGG16 (see :func:`vgg16_cicam_features`); the new layers are the non-local blocks,
    the extra ImageNet convs, the context projection and the classifier."""
    features = vgg16_cicam_features(variant, weights)
    channels = 512 if variant == "cub" else 1024
    size = (input_size // 16, input_size // 16)
    new = ["context", "classifier"] + [f"features.{n}" for n, _ in features.named_children()
                                       if n.startswith("nonlocal") or n in ("conv6", "conv7")]
    return CICAM(features, num_classes, channels=channels, feature_size=size, update_rate=update_rate,
                 combination=combination, new_layer_prefixes=new)


class _PoolStash(nn.Module):
    """Global average pooling that keeps its input (the CAM layer's output) for :class:`BackboneTrunk`."""

    def __init__(self):
        super().__init__()
        self.value: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.value = x
        return x.mean(dim=(2, 3), keepdim=True)


class BackboneTrunk(nn.Module):
    """A camkit CAM-ready backbone (:mod:`camkit.models.backbones`) without its head: ``(B, C, h, w)``.

    The backbone (kept as ``net``, module names unchanged, e.g. ``net.layer4``) must compute its logits
    as ``head(flatten(pool(F)))`` with ``pool`` an attribute, as every camkit backbone does. ``pool`` is
    replaced by a pooling module that keeps ``F``, and the head by an identity (so no parameter is
    unused under DistributedDataParallel). The backbone passed in is modified: give a fresh one.
    """

    def __init__(self, backbone: nn.Module, head_name: Optional[str] = None):
        super().__init__()
        if not isinstance(getattr(backbone, "pool", None), nn.Module):
            raise ValueError(f"{type(backbone).__name__} has no 'pool' module; BackboneTrunk needs a camkit "
                             "backbone (head(flatten(pool(F)))). Pass your feature extractor to CICAM directly.")
        head_name = head_name or next((n for n in ("fc", "classifier", "head") if hasattr(backbone, n)), None)
        if head_name is None:
            raise ValueError(f"cannot find the head of {type(backbone).__name__} (fc/classifier/head); "
                             "pass head_name=")
        backbone.pool = _PoolStash()
        setattr(backbone, head_name, nn.Identity())
        self.head_name = head_name
        self.net = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.net(x)
        features, self.net.pool.value = self.net.pool.value, None
        if features is None:
            raise RuntimeError(f"{type(self.net).__name__}.forward did not call its pool module")
        return features


def build_cicam(backbone: str = "tiny", num_classes: int = 4, pretrained=None, input_size: int = 224,
                update_rate: float = 0.01, combination="cicam-quadratic", **options) -> CICAM:
    """A CI-CAM model by backbone name (the ``cicam`` recipe's ``build_model``).

    ``"vgg16"`` / ``"vgg16-imagenet"``: CI-CAM's own VGG16 (:func:`vgg16_cicam_features`, variants
    ``"cub"`` and ``"imagenet"``); ``pretrained`` is a torchvision ``vgg16`` state-dict path or
    ``True`` (torchvision's local cache, never downloads). Any other name is a camkit backbone
    (:func:`camkit.models.backbones.build_backbone`: ``"tiny"``, ``"resnet50"``, ``"inception_v3"``,
    ``"mobilenet_v2"``) wrapped by :class:`BackboneTrunk`; ``options`` go to it.
    """
    if backbone in ("vgg16", "vgg16-imagenet"):
        weights = pretrained
        if pretrained is True:
            from camkit.models.backbones import _torchvision_cache_path
            weights = _torchvision_cache_path("VGG16_Weights")
        return cicam_vgg16(num_classes, "cub" if backbone == "vgg16" else "imagenet", weights or None,
                           input_size=input_size, update_rate=update_rate, combination=combination)
    from camkit.models.backbones import build_backbone
    net = build_backbone(backbone, num_classes=num_classes, pretrained=pretrained, **options)
    new = tuple(getattr(net, "new_layer_prefixes", ()))
    trunk = BackboneTrunk(net)
    prefixes = ["context", "classifier"] + [f"features.net.{p}" for p in new if p != trunk.head_name]
    model = CICAM(trunk, num_classes, input_size=input_size, update_rate=update_rate, combination=combination,
                  new_layer_prefixes=prefixes)
    model.backbone_name = backbone
    return model
