"""The training loop's periodic evaluation and ``camkit.evaluate`` are one evaluation: same numbers.

The expected side is built here from the definitions, independently of camkit's evaluation code:
images resized with the training's evaluation transform, boxes rescaled with wsolevaluation's
``int(x * new / old)`` (written out below), masks by nearest neighbour.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camkit
from camkit.data.synthetic import make_synthetic
from camkit.train import EvalTransform, localization_evaluator

pytestmark = pytest.mark.filterwarnings("ignore::camkit.heads.CAMHeadWarning")


class TinyGapNet(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class HandResized(torch.utils.data.Dataset):
    """The synthetic items at ``size``: boxes by wsolevaluation's truncating rule, masks nearest."""

    def __init__(self, dataset, size, mean, std):
        self.dataset, self.size = dataset, size
        self.transform = EvalTransform(size, mean, std)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        old = item["image"].shape[-1]
        box = [math.trunc(float(v) * self.size / old) for v in item["box"].tolist()]  # int(x * new / old)
        mask = F.interpolate(item["mask"].float()[None, None], size=(self.size, self.size), mode="nearest")[0, 0]
        return {"image": self.transform(item["image"]), "label": item["label"],
                "boxes": torch.tensor([box]), "mask": mask.to(torch.uint8)}


class EdgeBoxes(torch.utils.data.Dataset):
    """Synthetic items whose boxes sit on coordinates where ``x * (new / old)`` and ``x * new / old``
    truncate differently in float64 (49, 98, 147 and 196 for 294 -> 96 pixels)."""

    EDGES = (49, 98, 147, 196)

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = dict(self.dataset[index])
        x0, y0 = self.EDGES[index % 2], self.EDGES[(index // 2) % 2]
        item["box"] = torch.tensor([x0, y0, self.EDGES[2 + index % 2], self.EDGES[2 + (index // 4) % 2]])
        return item


def test_edge_coordinates_round_differently_with_a_float_scale():
    """The premise of the test below: a float scale factor moves these boxes by a pixel."""
    assert all(math.trunc(x * (96 / 294)) == math.trunc(x * 96 / 294) - 1 for x in EdgeBoxes.EDGES)


def test_training_evaluator_equals_camkit_evaluate():
    size = 96
    data = EdgeBoxes(make_synthetic(num_images=16, num_classes=4, image_size=294, context="uniform", seed=5))
    model = TinyGapNet().eval()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    during_training = localization_evaluator(("cam", "gradcam"), layers="features.3",
                                             transform=EvalTransform(size, mean, std), batch_size=5)(model, data)
    reference = camkit.evaluate(model, HandResized(data, size, mean, std), methods=("cam", "gradcam"),
                                layers="features.3", batch_size=5, progress=False)
    for (method, layer), row in reference.items():
        assert during_training[f"{method}/{layer}/MaxBoxAccV2"] == pytest.approx(row["MaxBoxAccV2"], abs=1e-9)
        assert during_training[f"{method}/{layer}/PxAP"] == pytest.approx(row["PxAP"], abs=1e-9)
