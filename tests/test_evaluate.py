"""camkit.evaluate on a tiny model: equals the metrics fed by hand, batch-invariant, exact under 2 gloo ranks."""
import argparse

import pytest

import camkit.heads
import torch
from torch import nn

from camkit.cli.evaluate import add_arguments
from two_ranks import on_two_ranks
from camkit.evaluation import evaluate, format_table
from camkit.metrics import LocalizationAccuracy, MaxBoxAcc, PxAP

# CAM has no head at the shallow layer: the engine says so with a warning and skips it, as intended
pytestmark = pytest.mark.filterwarnings("ignore::camkit.heads.CAMHeadWarning")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, stride=2),
                                      nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class ToyWSOL(torch.utils.data.Dataset):
    def __init__(self, n=4, size=24, masks=True):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(5, (n,), generator=g)
        self.boxes = [torch.tensor([[2 + k, 3, 14 + k, 20]]) for k in range(n)]
        self.masks = (torch.rand(n, size, size, generator=g) < 0.4).to(torch.uint8) if masks else None
        if masks:
            self.masks[:, 0, :] = 255

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        item = {"image": self.images[i], "label": int(self.labels[i]), "boxes": self.boxes[i]}
        if self.masks is not None:
            item["mask"] = self.masks[i]
        return item


METHODS = ("cam", "gradcam", "pcs")
LAYERS = ("features.1", "features.3")


def _run(batch_size=4, limit=None):
    return evaluate(TinyNet(), ToyWSOL(), methods=METHODS, layers=LAYERS, batch_size=batch_size,
                    cam_curve_interval=0.01, progress=False, limit=limit)


def test_evaluate_equals_metrics_fed_by_hand():
    results = _run()
    import camkit
    ds = ToyWSOL()
    exp = camkit.explain(TinyNet(), ds.images, methods=METHODS, layers=LAYERS, target=ds.labels)
    assert set(results) == {k for k in exp.maps}
    for key, row in results.items():
        maps = exp.maps[key]
        v2 = MaxBoxAcc(cam_curve_interval=0.01).update(maps, ds.boxes).compute()
        loc = LocalizationAccuracy(cam_curve_interval=0.01).update(maps, ds.boxes, exp.logits, ds.labels).compute()
        pxap = PxAP(0.01).update(maps, ds.masks).compute()
        assert row["MaxBoxAccV2"] == v2["MaxBoxAccV2"] and row["MaxBoxAcc@50"] == v2["MaxBoxAcc@50"]
        for k in ("GT-known", "Top-1 Loc", "Top-5 Loc", "Top-1 Cls", "Top-5 Cls"):
            assert row[k] == loc[k]
        assert row["PxAP"] == pxap["PxAP"] and "PeakIoU" in row
        assert row["num_images"] == 4
    table = format_table(results)
    assert "MaxBoxAccV2" in table and "features.3" in table and len(table.splitlines()) == 2 + len(results)


def test_evaluate_batch_size_invariant():
    assert _run(batch_size=1) == _run(batch_size=3)


def test_evaluate_without_masks_and_limit():
    res = evaluate(TinyNet(), ToyWSOL(masks=False), methods="gradcam", layers="features.3", batch_size=2,
                   cam_curve_interval=0.01, progress=False, limit=3)
    (row,) = res.values()
    assert "PxAP" not in row and row["num_images"] == 3


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d", "--layers", "a", "b", "--interval", "0.01"])
    assert args.layers == ["a", "b"] and args.interval == 0.01
    assert args.methods is None  # the engine's standard set, CAM where a linear head fits


def _run_two_ranks():
    return _run(batch_size=2)


def test_evaluate_two_gloo_ranks_equals_single_process():
    assert on_two_ranks(_run_two_ranks) == _run(batch_size=4)


def test_mask_only_dataset_reports_pixel_metrics_only():
    ds = ToyWSOL()
    ds.boxes = [torch.zeros((0, 4), dtype=torch.long) for _ in ds.boxes]
    (row,) = evaluate(TinyNet(), ds, methods="gradcam", layers="features.3", batch_size=4,
                      cam_curve_interval=0.01, progress=False).values()
    assert "MaxBoxAccV2" not in row and "GT-known" not in row
    assert {"PxAP", "pIoU", "PeakIoU", "Top-1 Cls"} <= set(row)


def test_an_image_without_box_in_a_box_dataset_is_refused():
    """The metrics' policy holds in evaluate too: no silent miss for the image without a box (item 2 here)."""
    ds = ToyWSOL(masks=False)
    ds.boxes[2] = torch.zeros((0, 4), dtype=torch.long)
    with pytest.raises(ValueError, match="dataset item 2 has no ground-truth box"):
        evaluate(TinyNet(), ds, methods="gradcam", layers="features.3", batch_size=2, cam_curve_interval=0.01,
                 progress=False)


@pytest.mark.filterwarnings("ignore:.*target logit:RuntimeWarning")
def test_default_methods_skip_cam_where_no_linear_head_fits():
    """``methods=None`` evaluates the standard set; a model whose head is not one linear layer keeps the rest."""
    class TwoLayerHead(TinyNet):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(8, 16), nn.Hardswish(), nn.Linear(16, 5))

    with pytest.warns(camkit.heads.CAMHeadWarning):
        res = evaluate(TwoLayerHead(), ToyWSOL(masks=False), layers="features.3", batch_size=2,
                       cam_curve_interval=0.01, progress=False)
    assert [m for m, _ in res] == ["gradcam", "gradcam++", "pcs", "bagcams"]
