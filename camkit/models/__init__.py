"""camkit.models: CAM-ready backbones (GAP + one linear head), CI-CAM, FAM and TAP pooling."""
from camkit.models.backbones import (  # noqa: F401
    InceptionV3GAP, MobileNetV2GAP, ResNet50GAP, TinyCNN, VGG16GAP, build_backbone, cam_layer,
    list_backbones, load_pretrained,
)
from camkit.models.cicam import (  # noqa: F401
    CICAM, CICAM_OUTPUT, CausalContextPool, NonLocalBlock, build_cicam, cicam_vgg16, vgg16_cicam_features,
)
from camkit.models.fam import FAM, ThresholdedAvgPool, build_fam  # noqa: F401
