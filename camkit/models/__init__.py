"""camkit.models: CAM-ready backbones (GAP + one linear head) and recipe-specific modules."""
from camkit.models.backbones import (  # noqa: F401
    InceptionV3GAP, MobileNetV2GAP, ResNet50GAP, TinyCNN, VGG16GAP, build_backbone, cam_layer,
    list_backbones, load_pretrained,
)
