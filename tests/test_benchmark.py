"""camkit.bench end to end: a run's schema and outputs, its quality pass, its datasets, peers and input checks.

The floor pass and peak memory are in test_bench_cost.py, tables and file names in test_bench_report.py.
No timings are asserted.
"""
import csv
import json
import math

import pytest
import torch

from camkit import bench
from camkit.bench import peers
from camkit.data.open import open_dataset
from camkit.model_spec import load_model
from test_cli import TINY

SYNTHETIC = "synthetic:num_images=6,image_size=32,num_classes=4"


def open_for(spec, preprocess, **options):
    """``spec`` opened as ``camkit benchmark`` opens it: the test split at the model's size and normalisation."""
    return open_dataset(spec, split="test", image_size=preprocess.size[0],
                        normalize=(preprocess.mean, preprocess.std), **options)


@pytest.fixture(scope="module")
def result():
    loaded = load_model(TINY)
    dataset = open_for(SYNTHETIC, loaded.preprocess)
    with pytest.warns(UserWarning, match="repeats=1: with fewer than 3 timed rounds"):
        return bench.run_benchmark(loaded, dataset, methods=["gradcam", "cam"], layers=["layer1", "layer2"],
                                   batch_size=4, cost_batch=3, repeats=1, peers=False,
                                   settings={"model": TINY, "data": SYNTHETIC})


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
    paths = bench.write_outputs(result, tmp_path)
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


def test_missing_peers_are_skipped_not_fatal(monkeypatch):
    monkeypatch.setattr(peers, "PEERS", {"nopeer": ("camkit_no_such_module", lambda m: None)})
    model = load_model(TINY).model
    rows, skipped = bench.compare_peers(model, torch.randn(2, 3, 32, 32), ["gradcam"], ["layer2"])
    assert rows == [] and "not importable" in skipped["nopeer"]


def test_quality_uses_ground_truth_class_maps_and_the_metrics_module():
    from camkit import metrics
    import camkit

    loaded = load_model(TINY)
    dataset = open_for(SYNTHETIC, loaded.preprocess)
    quality, classification = bench.evaluate_quality(loaded.model, dataset, ["gradcam"], ["layer2"],
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
    sample = open_for(str(tmp_path), Preprocess(32))[0]
    assert sample["label"] == 3 and sample["image"].shape == (3, 32, 32)
    # int(x * 32 / 40), int(y * 32 / 20): 10 -> 8, 5 -> 8, 39 -> 31, 19 -> 30
    assert sample["boxes"].tolist() == [[8, 8, 31, 30]]


def test_wsol_format_dataset_spec(tmp_path):
    from camkit.data.synthetic import export_wsol, make_synthetic
    from camkit.inputs import Preprocess

    data = make_synthetic(num_images=3, image_size=32, seed=2)
    export_wsol(data, tmp_path, split="test")
    preprocess = Preprocess(32, (0.5,) * 3, (0.5,) * 3)
    dataset = open_for(str(tmp_path), preprocess)  # metadata/test by default
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample["label"] == int(data.labels[1])
    assert sample["boxes"].tolist() == [data.boxes[1].tolist()]  # same size: boxes unchanged
    torch.testing.assert_close(sample["image"], data.images[1].float() / 255 * 2 - 1, atol=1e-6, rtol=0)
    masked = open_for(str(tmp_path), preprocess, metadata=tmp_path / "metadata" / "test-masks")
    assert masked[1]["mask"].tolist() == data.masks[1].to(torch.uint8).tolist()


def test_synthetic_spec_is_the_old_benchmark_split():
    # the test split of a synthetic spec: seed 1, uniform context, the learnable setting's other keys,
    # images normalised with the model's mean and std, the one box as a (1, 4) tensor, masks as uint8
    from camkit.data.synthetic import LEARNABLE, make_synthetic
    from camkit.inputs import Preprocess

    old = make_synthetic(num_images=6, context="uniform", seed=1, **dict(LEARNABLE, image_size=32, num_classes=4))
    dataset = open_for(SYNTHETIC, Preprocess(32, (0.5, 0.25, 0.5), (0.5, 0.5, 0.25)))
    mean, std = torch.tensor([0.5, 0.25, 0.5]).view(3, 1, 1), torch.tensor([0.5, 0.5, 0.25]).view(3, 1, 1)
    assert len(dataset) == 6
    for index in range(6):
        item, expected = dataset[index], old[index]
        torch.testing.assert_close(item["image"], (expected["image"].float() / 255 - mean) / std)
        assert item["label"] == expected["label"]
        assert item["boxes"].tolist() == expected["box"].view(1, 4).tolist()
        assert torch.equal(item["mask"], expected["mask"].to(torch.uint8))


def _small_run(loaded, dataset, **options):
    arguments = dict(methods=["gradcam"], layers=["layer2"], batch_size=2, limit=2, cost_batch=2, repeats=3,
                     peers=False)
    arguments.update(options)
    return bench.run_benchmark(loaded, dataset, **arguments)


def test_fewer_than_three_repeats_warn_that_ratios_are_unreliable():
    import warnings

    loaded = load_model(TINY)
    dataset = open_for(SYNTHETIC, loaded.preprocess)
    with pytest.warns(UserWarning, match=r"repeats=2: .* ratios to the floor are unreliable; use repeats=3"):
        _small_run(loaded, dataset, repeats=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert _small_run(loaded, dataset, repeats=3).settings["repeats"] == 3


@pytest.mark.parametrize("options, fragment", [
    ({"repeats": 0}, "repeats must be a positive integer, got 0"),
    ({"cost_batch": 0}, "cost_batch must be a positive integer, got 0"),
    ({"batch_size": -1}, "batch_size must be a positive integer, got -1"),
    ({"limit": 0}, "limit must be a positive integer, got 0"),
    ({"repeats": 2.5}, "repeats must be a positive integer, got 2.5"),
])
def test_bad_counts_are_refused_before_any_work(options, fragment):
    loaded = load_model(TINY)
    loaded.model.train()
    dataset = open_for(SYNTHETIC, loaded.preprocess)
    with pytest.raises(ValueError, match=fragment):
        _small_run(loaded, dataset, **options)
    assert loaded.model.training  # not even put in eval mode


def _imports(path):
    """``(module-level imports, all imports)`` of a source file, as module names."""
    import ast

    tree = ast.parse(path.read_text())

    def names(nodes):
        found = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                found.add(node.module or "")
        return found
    return names(tree.body), names(ast.walk(tree))


def test_bench_is_below_the_package_face_and_free_of_argparse():
    from pathlib import Path

    import camkit.bench
    import camkit.cli.benchmark

    for path in sorted(Path(camkit.bench.__file__).parent.glob("*.py")):
        _, every = _imports(path)
        assert "argparse" not in every, path
        assert "camkit" not in every, f"{path} imports the package face; import camkit.<module> instead"
    top, _ = _imports(Path(camkit.cli.benchmark.__file__))
    # the command module imports torch and the library only inside run() (and add_arguments' defaults)
    assert {name for name in top if name.split(".")[0] in ("torch", "camkit")} <= {"camkit.cli.common"}


def test_peer_rows_compare_after_the_same_postprocessing(monkeypatch):
    # a fake peer "importable" as math: Grad-CAM by hand at layer resolution, times 3 (min-max removes
    # the scale), and a second peer whose runner raises: a row with the error, not a crash
    model = load_model(TINY).model.eval()

    def hand_gradcam(model, module, batch, classes):
        captured = {}
        handle = module.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
        with torch.enable_grad():
            logits = model(batch)
            grads = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(), captured["a"])[0]
        handle.remove()
        return 3 * torch.relu((grads.mean((2, 3), keepdim=True) * captured["a"]).sum(1)).detach()

    def broken(model, module, batch, classes):
        raise RuntimeError("peer broke")

    monkeypatch.setattr(peers, "PEERS", {"hand": ("math", lambda m: hand_gradcam if m == "gradcam" else None),
                                         "broken": ("math", lambda m: broken)})
    rows, skipped = bench.compare_peers(model, torch.randn(3, 3, 32, 32), ["gradcam"], ["layer2", "layer2@0"],
                                        repeats=1)
    assert skipped == {}
    assert [(r["peer"], r["layer"]) for r in rows] == [("hand", "layer2"), ("broken", "layer2")]  # no @k
    assert rows[0]["max_abs_difference"] < 1e-5 and rows[0]["speed_ratio"] > 0
    assert rows[1]["error"] == "RuntimeError: peer broke" and "speed_ratio" not in rows[1]
