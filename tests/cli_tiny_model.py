"""A tiny GAP classifier for the CLI and benchmark tests, loadable as ``tests/cli_tiny_model.py:tiny``."""
import torch
from torch import nn

from camkit.inputs import Preprocess

CLASS_NAMES = ["disk", "square", "triangle", "cross"]


class TinyNet(nn.Module):
    """``(B, 3, 32, 32)`` -> ``(B, 4)``; layers ``layer1`` (32x32), ``layer2`` (16x16), head ``fc``."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layer2(self.layer1(x))).flatten(1))


def tiny(num_classes: int = 4):
    """The factory: fixed seeded weights, 32x32 inputs, mean = std = 0.5, four class names."""
    torch.manual_seed(0)
    model = TinyNet(num_classes)
    return model, Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), CLASS_NAMES[:num_classes]
