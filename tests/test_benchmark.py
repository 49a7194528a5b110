"""camkit.benchmark: the output schema, the floor pass, peer skipping. (No timings are asserted.)"""
import csv
import json
import math

import pytest
import torch

from camkit import benchmark
from camkit.model_spec import load_model
from test_cli import TINY


@pytest.fixture(scope="module")
def result():
    loaded = load_model(TINY)
    dataset = benchmark.load_dataset("synthetic:6:32", preprocess=loaded.preprocess)
    return benchmark.run_benchmark(loaded, dataset, methods=["gradcam", "cam"], layers=["layer1", "layer2"],
                                   batch_size=4, cost_batch=3, repeats=1, peers=False,
                                   settings={"model": TINY, "data": "synthetic:6:32"})


def test_floor_pass_is_the_gradient_of_the_top1_logit():
    # GAP + linear head: d logit_c / d A[k, i, j] = W[c, k] / (h * w), the same at every position.
    model = load_model(TINY).model
    x = torch.randn(2, 3, 32, 32)
    grad = benchmark.floor_pass(model, x, "layer2")
    classes = model(x).argmax(1)
    expected = (model.fc.weight[classes] / (16 * 16))[:, :, None, None].expand(-1, -1, 16, 16)
    torch.testing.assert_close(grad, expected)
    assert not model.layer2._forward_hooks  # the hook is gone


def test_result_schema(result):
    assert set(result.quality) == {"gradcam", "cam"}
    assert 0.0 <= result.classification["top1"] <= 100.0 and result.classification["images"] == 6
    jobs = [(r.method, r.layer) for r in result.cost]
    assert jobs == [("floor", "layer1"), ("gradcam", "layer1"), ("cam", "layer1"), ("all", "layer1"),
                    ("floor", "layer2"), ("gradcam", "layer2"), ("cam", "layer2"), ("all", "layer2")]
    rows = {(r.method, r.layer): r for r in result.cost}
    for layer in ("layer1", "layer2"):
        assert rows[("floor", layer)].ratio_to_floor == 1.0
        assert rows[("gradcam", layer)].images_per_second > 0 and rows[("gradcam", layer)].error is None
    # CAM cannot run at layer1 (8 channels, the head takes 16): recorded as an error, not a crash
    assert "HeadNotFoundError" in rows[("cam", "layer1")].error
    assert math.isnan(rows[("cam", "layer1")].seconds)
    # ... and "all" at layer1 falls back to the methods that work there
    assert rows[("all", "layer1")].error is None
    for key in ("torch", "torchvision", "device", "torch_threads", "camkit"):
        assert key in result.environment
    assert result.settings["cost_batch"] == 3 and result.settings["layers"] == ["layer1", "layer2"]


def test_written_files(result, tmp_path):
    paths = benchmark.write_outputs(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert set(data) == {"quality", "classification", "cost", "peers", "skipped_peers", "environment",
                         "settings"}
    assert data["cost"][2]["seconds"] is None  # NaN is written as null, so the JSON is standard
    with open(paths["cost_csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["method", "layer", "seconds", "images_per_second", "ratio_to_floor",
                             "peak_memory_mib", "batch_size", "error"]
    assert len(rows) == 8
    with open(paths["quality_csv"]) as handle:
        header = next(csv.reader(handle))
    assert header[:2] == ["method", "layer"]
    report = paths["report"].read_text()
    for section in ("# camkit benchmark", "## Cost", "## Environment", "| floor | layer1 |"):
        assert section in report
    for key in ("cost_figure", "cost_ratio_figure"):
        assert paths[key].stat().st_size > 0


def test_quality_table_layout():
    result = benchmark.BenchmarkResult(
        quality={"cam": {"l2": {"MaxBoxAccV2": 61.0}}, "gradcam": {"l1": {"MaxBoxAccV2": 40.25},
                                                                   "l2": {"MaxBoxAccV2": 60.5}}},
        classification={"top1": 50.0}, cost=[], settings={"layers": ["l1", "l2"]})
    assert benchmark.quality_markdown(result).splitlines() == [
        "| method \\ layer | l1 | l2 |", "|---|---|---|", "| cam | - | 61.00 |", "| gradcam | 40.25 | 60.50 |"]


def test_missing_peers_are_skipped_not_fatal(monkeypatch):
    monkeypatch.setattr(benchmark, "PEERS", {"nopeer": ("camkit_no_such_module", lambda m: None)})
    model = load_model(TINY).model
    rows, skipped = benchmark.compare_peers(model, torch.randn(2, 3, 32, 32), ["gradcam"], ["layer2"])
    assert rows == [] and "not importable" in skipped["nopeer"]


def test_peak_memory_is_non_negative():
    with benchmark.PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(4_000_000)  # 16 MB
        del block
    assert memory.peak_mib >= 0


def test_quality_uses_ground_truth_class_maps_and_the_metrics_module():
    from camkit import metrics
    import camkit

    loaded = load_model(TINY)
    dataset = benchmark.load_dataset("synthetic:6:32", preprocess=loaded.preprocess)
    quality, classification = benchmark.evaluate_quality(loaded.model, dataset, ["gradcam"], ["layer2"],
                                                         batch_size=4)
    # independent path: one batch of all six images, maps of the labels, metrics fed directly
    images = torch.stack([dataset[i]["image"] for i in range(6)])
    labels = torch.tensor([dataset[i]["label"] for i in range(6)])
    exp = camkit.explain(loaded.model, images, methods="gradcam", layers="layer2", target=labels)
    maps = exp.maps[("gradcam", "layer2")]
    boxes = [dataset[i]["boxes"] for i in range(6)]
    masks = torch.stack([dataset[i]["mask"] for i in range(6)]).to(torch.uint8)
    v2 = metrics.MaxBoxAcc().update(maps, boxes).compute()
    got = quality["gradcam"]["layer2"]
    assert got["MaxBoxAccV2"] == pytest.approx(v2["MaxBoxAccV2"])
    assert got["MaxBoxAcc@70"] == pytest.approx(v2["MaxBoxAcc@70"])
    v1 = metrics.MaxBoxAcc(iou_thresholds=(50,), multi_contour=False).update(maps, boxes).compute()
    assert got["GT-known"] == pytest.approx(v1["MaxBoxAcc@50"])
    assert got["PxAP"] == pytest.approx(metrics.PxAP().update(maps, masks).compute()["PxAP"])
    assert got["PeakIoU"] == pytest.approx(metrics.PeakIoU().update(maps, masks).compute()["PeakIoU"])
    expected_top1 = 100.0 * float((exp.logits.argmax(1) == labels).float().mean())
    assert classification["top1"] == pytest.approx(expected_top1) and classification["images"] == 6


def test_annotated_folder_rescales_boxes_like_wsolevaluation(tmp_path):
    from PIL import Image

    from camkit.inputs import Preprocess

    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 20)).save(tmp_path / "images" / "a.png")
    (tmp_path / "annotations.json").write_text(json.dumps(
        [{"file": "a.png", "label": 3, "width": 40, "height": 20, "boxes_xyxy": [[10.0, 5.0, 39.0, 19.0]]}]))
    sample = benchmark.load_dataset(str(tmp_path), preprocess=Preprocess(32))[0]
    assert sample["label"] == 3 and sample["image"].shape == (3, 32, 32)
    # int(x * 32 / 40), int(y * 32 / 20): 10 -> 8, 5 -> 8, 39 -> 31, 19 -> 30
    assert sample["boxes"].tolist() == [[8, 8, 31, 30]]


def test_wsol_format_dataset_spec(tmp_path):
    from camkit.data.synthetic import export_wsol, make_synthetic
    from camkit.inputs import Preprocess

    data = make_synthetic(num_images=3, image_size=32, seed=2)
    export_wsol(data, tmp_path, split="test")
    preprocess = Preprocess(32, (0.5,) * 3, (0.5,) * 3)
    dataset = benchmark.load_dataset(f"wsol:{tmp_path}", preprocess=preprocess)  # metadata/test by default
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample["label"] == int(data.labels[1])
    assert sample["boxes"].tolist() == [data.boxes[1].tolist()]  # same size: boxes unchanged
    torch.testing.assert_close(sample["image"], data.images[1].float() / 255 * 2 - 1, atol=1e-6, rtol=0)
    masked = benchmark.load_dataset(f"wsol:{tmp_path}:{tmp_path / 'metadata' / 'test-masks'}", preprocess)
    assert masked[1]["mask"].tolist() == data.masks[1].to(torch.uint8).tolist()
