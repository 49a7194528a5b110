"""Box rules as one named option: the released CI-CAM rule on hand maps and against a loop reference, the
``box_rule=`` grammar and its refusals, and the single-threshold accuracy of MaxBoxAcc / LocalizationAccuracy /
camkit.evaluate / the CLI on hand-made maps and boxes."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from camkit import cli
from camkit.boxes import BoxRule, box_rule, boxes_cicam, boxes_cicam_kept_mean, boxes_from_map
from camkit.evaluation import evaluate
from camkit.explanation import Explanation
from camkit.metrics import LocalizationAccuracy, MaxBoxAcc

TINY = str(Path(__file__).with_name("cli_tiny_model.py")) + ":tiny"


# ------------------------------------------------------------------ the released CI-CAM rule, by hand
def _two_blobs():
    """(5, 8): a weak wide blob A (0.3, rows 0..2, cols 0..3, 12 px) and a strong small blob B (1.0, row 4,
    cols 6..7, 2 px)."""
    m = np.zeros((5, 8))
    m[0:3, 0:4] = 0.3
    m[4, 6:8] = 1.0
    return m


def test_released_and_kept_mean_rules_differ_on_a_hand_map():
    m = _two_blobs()
    # released: cut = map > 0.12 * 1.0 keeps A and B; the mean over all 40 pixels is (12*0.3 + 2*1.0)/40 = 0.14,
    # so both survive; A's bbox (4 x 3 = 12) beats B's (2 x 1): slices x 0:4, y 0:3 -> box (0, 0, 4, 3)
    assert boxes_cicam(m).tolist() == [[0, 0, 4, 3]]
    # kept mean: u = 76 (A), 255 (B); kept u > 0.2*255 = 51 is all 14; their mean (12*76 + 2*255)/14 = 101.6
    # leaves B alone: tight box x 6..7, y 4
    assert boxes_cicam_kept_mean(m).tolist() == [[6, 4, 7, 4]]
    # seg_thr 0.5: the cut keeps B only (mean 2/40), its slices x 6:8, y 4:5 -> (6, 4, min(8, 7), min(5, 4))
    assert boxes_cicam(m, seg_thr=0.5).tolist() == [[6, 4, 7, 4]]


def test_released_rule_clips_the_exclusive_stop_at_the_image_edge():
    m = _two_blobs()[::-1, ::-1].copy()   # A at rows 2..4, cols 4..7 (touching the right and bottom edges)
    # A's slices x 4:8, y 2:5; the released (4, 2, 8, 5) is (4, 2, min(8, 7), min(5, 4)) in inclusive pixels
    assert boxes_cicam(m).tolist() == [[4, 2, 7, 4]]
    assert boxes_cicam_kept_mean(m).tolist() == [[0, 0, 1, 0]]


def test_released_rule_ties_take_the_first_component_and_use_4_connectivity():
    m = np.zeros((6, 6))
    m[1, 3:5] = 1.0           # first in raster order, bbox 2 x 1
    m[4, 0:2] = 1.0           # same bbox area, later
    assert boxes_cicam(m).tolist() == [[3, 1, 5, 2]]
    d = np.zeros((6, 6))
    d[1, 1] = d[2, 2] = d[3, 3] = 1.0    # diagonal: three 4-connected components of one pixel each
    d[3, 3] = 0.9
    assert boxes_cicam(d).tolist() == [[1, 1, 2, 2]]


def test_released_rule_without_foreground_gives_the_empty_box():
    assert boxes_cicam(np.zeros((4, 5))).tolist() == [[0, 0, 0, 0]]
    assert boxes_cicam(np.full((4, 5), 0.5)).tolist() == [[0, 0, 0, 0]]   # nothing is above the mean (exact)


def _reference_cicam(m, seg_thr):
    """The released rule from its definition with plain loops (float64): cut, whole-image mean, 4-connected
    flood fill, largest bbox area (first on ties), exclusive stops clipped to W-1 / H-1."""
    h, w = len(m), len(m[0])
    peak = max(max(row) for row in m)
    cut = [[m[y][x] if m[y][x] > seg_thr * peak else 0.0 for x in range(w)] for y in range(h)]
    mean = sum(sum(row) for row in cut) / (h * w)
    keep = [[cut[y][x] > mean for x in range(w)] for y in range(h)]
    seen = [[False] * w for _ in range(h)]
    best, best_area = None, -1
    for y0 in range(h):
        for x0 in range(w):
            if not keep[y0][x0] or seen[y0][x0]:
                continue
            stack, xs, ys = [(y0, x0)], [], []
            seen[y0][x0] = True
            while stack:
                y, x = stack.pop()
                xs.append(x)
                ys.append(y)
                for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    v, u = y + dy, x + dx
                    if 0 <= v < h and 0 <= u < w and keep[v][u] and not seen[v][u]:
                        seen[v][u] = True
                        stack.append((v, u))
            area = (max(xs) + 1 - min(xs)) * (max(ys) + 1 - min(ys))
            if area > best_area:
                best_area = area
                best = [min(xs), min(ys), min(max(xs) + 1, w - 1), min(max(ys) + 1, h - 1)]
    return [best] if best is not None else [[0, 0, 0, 0]]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("seg_thr", [0.0, 0.12, 0.4])
def test_released_rule_equals_the_loop_reference(seed, seg_thr):
    rng = np.random.default_rng(seed)
    m = rng.random((11, 13)) ** 3 * (rng.random((11, 13)) < 0.6)
    m = m / m.max()
    assert boxes_cicam(m, seg_thr=seg_thr).tolist() == _reference_cicam(m.tolist(), seg_thr)


def test_released_rule_is_invariant_to_scaling_the_map():
    m = _two_blobs()
    assert boxes_cicam(m * 0.5).tolist() == boxes_cicam(m).tolist()


# ------------------------------------------------------------------------------ the box_rule grammar
def test_named_rules_and_fixed_fractions_resolve():
    assert box_rule("fixed:0.5").options == {"fraction": 0.5}
    assert box_rule("fixed:0.5").name == "fixed:0.5"
    assert box_rule("fixed:.25").options == {"fraction": 0.25}
    assert box_rule("pas", q=95).options == {"q": 95}
    assert box_rule("pas", q=95).name == "pas(q=95)" and box_rule("fixed:0.3", multi_contour=True).name == \
        "fixed:0.3(multi_contour=True)"
    assert box_rule().sweep and not box_rule("cicam").sweep
    rule = box_rule("cicam")
    assert box_rule(rule) is rule
    assert box_rule("fixed:0.5") == box_rule("fixed", fraction=0.5) and box_rule("pas") == box_rule("percentile")
    m = _two_blobs()
    np.testing.assert_array_equal(box_rule("fixed:0.5")(m), boxes_from_map(m, 0.5))
    np.testing.assert_array_equal(box_rule("cicam", seg_thr=0.5)(m), [[6, 4, 7, 4]])
    np.testing.assert_array_equal(box_rule("cicam-kept-mean")(m), [[6, 4, 7, 4]])


def _wrong_shape(score_map):
    return [[0, 0, 1]]


def _outside(score_map):
    return [[0, 0, score_map.shape[1], 0]]


def _fractional(score_map):
    return [[0.5, 0, 1, 1]]


def _no_box(score_map):
    return np.zeros((0, 4))


BAD_RULES = {
    "unknown-name": (("otsu",), {}, "unknown box rule 'otsu'"),
    "not-a-rule": ((3,), {}, "unknown box rule 3"),
    "fixed-above-1": (("fixed:2",), {}, "must be a fraction in [0, 1]"),
    "fixed-negative": (("fixed:-0.1",), {}, "must be a fraction in [0, 1]"),
    "fixed-text": (("fixed:half",), {}, "got 'half'"),
    "fixed-nan": (("fixed:nan",), {}, "must be a fraction in [0, 1]"),
    "fixed-empty": (("fixed:",), {}, "must be a fraction in [0, 1]"),
    "fixed-fraction-twice": (("fixed:0.5",), {"fraction": 0.3}, "do not pass fraction= too"),
    "fixed-fraction-option-bad": (("fixed",), {"fraction": 3}, "fraction must be a number in [0, 1]"),
    "pas-unknown-option": (("pas",), {"percent": 90}, "has no option(s) 'percent'; its options are tau, q"),
    "pas-q-150": (("pas",), {"q": 150}, "q must be a number in [0, 100]"),
    "cicam-seg-thr-2": (("cicam",), {"seg_thr": 2}, "seg_thr must be a number in [0, 1]"),
    "wsol-with-options": (("wsol",), {"fraction": 0.5}, "takes no options"),
    "callable-with-options": ((_wrong_shape,), {"k": 1}, "takes no options"),
    "callable-wrong-shape": ((_wrong_shape,), {}, "box rule '_wrong_shape' must return (n, 4)"),
    "callable-fractional": ((_fractional,), {}, "whole pixel indices"),
    "callable-outside": ((_outside,), {}, "returned boxes outside the 8 x 8 map"),
    "callable-no-box": ((_no_box,), {}, "returned no box"),
}


@pytest.mark.parametrize("args, options, fragment", list(BAD_RULES.values()), ids=list(BAD_RULES))
def test_bad_rules_are_refused_with_a_message(args, options, fragment):
    with pytest.raises(ValueError) as info:
        box_rule(*args, **options)
    assert fragment in str(info.value)


BAD_SPECS = ["otsu", "fixed:2", _wrong_shape, _outside]


@pytest.mark.parametrize("spec", BAD_SPECS, ids=["otsu", "fixed:2", "wrong-shape", "outside"])
@pytest.mark.parametrize("where", ["MaxBoxAcc", "LocalizationAccuracy", "evaluate", "Explanation.boxes"])
def test_every_place_refuses_a_bad_rule_before_anything_runs(spec, where):
    class Untouchable(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise AssertionError("the dataset was read before the rule was checked")

    class Unrunnable(nn.Module):
        def forward(self, x):
            raise AssertionError("the model ran before the rule was checked")

    calls = {"MaxBoxAcc": lambda: MaxBoxAcc(box_rule=spec),
             "LocalizationAccuracy": lambda: LocalizationAccuracy(box_rule=spec),
             "evaluate": lambda: evaluate(Unrunnable(), Untouchable(), methods="gradcam", progress=False,
                                          metric_workers=0, box_rule=spec),
             "Explanation.boxes": lambda: _explanation(torch.ones(1, 8, 8)).boxes("gradcam", box_rule=spec)}
    with pytest.raises(ValueError, match="box rule"):
        calls[where]()


def test_a_rule_and_fixed_threshold_together_are_refused():
    with pytest.raises(ValueError, match="drop fixed_threshold"):
        LocalizationAccuracy(fixed_threshold=0.5, box_rule="pas")


def test_a_callable_that_goes_wrong_later_is_refused_naming_the_rule_and_the_image():
    def late(score_map):
        return [[0, 0, 1, 1]] if score_map.shape == (8, 8) else [[0, 0, 1]]

    metric = MaxBoxAcc(box_rule=late)
    with pytest.raises(ValueError, match="image 0: box rule 'late' must return"):
        metric.update(np.ones((1, 6, 6)), [[[0, 0, 2, 2]]])
    assert int(metric.num_images) == 0 and int(metric.counts.sum()) == 0


# --------------------------------------------------------- single-threshold accuracy, hand oracles
def _three_maps():
    """Three 8 x 8 maps, each a 3 x 3 block of ones at x, y 2..4: every rule here boxes it as (2, 2, 5, 5)
    (fixed and PaS: the contour box x + w; cicam: the exclusive stop), area 16."""
    maps = np.zeros((3, 8, 8))
    maps[:, 2:5, 2:5] = 1.0
    return maps


# GT boxes: IoU 1 (the same box), 4/16 = 0.25 (a 2 x 2 corner), 8/16 = 0.5 (the top half)
GT = [[[2, 2, 5, 5]], [[2, 2, 3, 3]], [[2, 2, 5, 3]]]


@pytest.mark.parametrize("rule", ["fixed:0.5", "pas", "cicam"])
def test_single_threshold_box_accuracy_on_hand_maps(rule):
    out = MaxBoxAcc(box_rule=rule).update(_three_maps(), GT).compute()
    # IoUs 1, 0.25, 0.5: >= 0.3 for images 1 and 3, >= 0.5 for 1 and 3, >= 0.7 for image 1 only
    assert out["BoxAcc@30"] == pytest.approx(200 / 3)
    assert out["BoxAcc@50"] == pytest.approx(200 / 3)
    assert out["BoxAcc@70"] == pytest.approx(100 / 3)
    assert out["BoxAcc"] == pytest.approx((200 / 3 + 200 / 3 + 100 / 3) / 3)
    assert out["box_rule"] == rule and out["num_images"] == 3
    assert not any(key.startswith(("MaxBoxAcc", "best_threshold", "curve")) for key in out)


def test_the_rule_decides_the_accuracy():
    m = _two_blobs()[None]
    gt = [[[0, 0, 4, 3]]]      # blob A's released box
    assert MaxBoxAcc(box_rule="cicam").update(m, gt).compute()["BoxAcc@50"] == 100.0
    assert MaxBoxAcc(box_rule="cicam-kept-mean").update(m, gt).compute()["BoxAcc@50"] == 0.0


def test_localization_accuracy_at_a_rule_on_hand_maps():
    logits = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 0, 1])        # top-1 right for images 1 and 2; image 3's label is 2nd
    out = LocalizationAccuracy(box_rule="fixed:0.5").update(_three_maps(), GT, logits, labels).compute()
    # IoU >= 0.5: images 1 and 3; with the top-1 right: image 1; top-5 (3 classes): both
    assert out["GT-known"] == pytest.approx(200 / 3)
    assert out["Top-1 Loc"] == pytest.approx(100 / 3)
    assert out["Top-5 Loc"] == pytest.approx(200 / 3)
    assert out["Top-1 Cls"] == pytest.approx(200 / 3) and out["box_rule"] == "fixed:0.5"
    assert "best_threshold" not in out


def test_fixed_rule_equals_the_sweep_read_at_its_threshold():
    rng = np.random.default_rng(3)
    maps = rng.random((6, 12, 12))
    gt = [[[1 + k, 2, 7 + k, 9]] for k in range(6)]
    sweep = MaxBoxAcc(multi_contour=False).update(maps, gt)
    tau = int(np.flatnonzero(np.isclose(sweep.thresholds, 0.5))[0])
    rule = MaxBoxAcc(box_rule="fixed:0.5").update(maps, gt)
    np.testing.assert_array_equal(rule.counts[:, 0], sweep.counts[:, tau])


def test_rule_metrics_merge_exactly_and_refuse_another_rule():
    maps = _three_maps()
    whole = MaxBoxAcc(box_rule="pas").update(maps, GT)
    merged = MaxBoxAcc(box_rule="pas").update(maps[:1], GT[:1])
    merged.merge(MaxBoxAcc(box_rule="pas").update(maps[1:], GT[1:]))
    assert torch.equal(whole.counts, merged.counts) and int(merged.num_images) == 3
    with pytest.raises(ValueError, match="configurations differ"):
        whole.merge(MaxBoxAcc(box_rule="cicam"))
    with pytest.raises(ValueError, match="configurations differ"):
        whole.merge(MaxBoxAcc())
    assert MaxBoxAcc(box_rule="pas").reset().box_rule == box_rule("pas")


# ---------------------------------------------------------------------------- evaluate and the CLI
def _explanation(maps):
    return Explanation(maps={("gradcam", "layer4"): maps}, logits=torch.zeros(maps.shape[0], 3),
                       targets=torch.zeros(maps.shape[0], dtype=torch.long), methods=["gradcam"],
                       layers=["layer4"], images=torch.zeros(maps.shape[0], 3, *maps.shape[-2:]))


class _Blocks(torch.utils.data.Dataset):
    """Images whose channel 0 is the hand maps' block; boxes GT; label 0."""

    def __len__(self):
        return 3

    def __getitem__(self, index):
        image = torch.zeros(3, 8, 8)
        image[0] = torch.from_numpy(_three_maps()[index]).float()
        return {"image": image, "label": 0, "boxes": torch.tensor(GT[index])}


class _Identity(nn.Module):
    """Logits (B, 3) from a 1 x 1 conv that copies channel 0, then GAP: Grad-CAM's map is the block itself."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 1, 1, bias=False)
        self.fc = nn.Linear(1, 3)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0
            self.fc.weight.copy_(torch.tensor([[1.0], [0.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("rule", ["fixed:0.5", "pas", "cicam"])
def test_evaluate_reports_the_single_threshold_accuracy(rule):
    (row,) = evaluate(_Identity(), _Blocks(), methods="cam", layers="features", progress=False, metric_workers=0,
                      box_rule=rule).values()
    assert row["BoxAcc@50"] == pytest.approx(200 / 3) and row["BoxAcc@70"] == pytest.approx(100 / 3)
    assert row["GT-known"] == pytest.approx(200 / 3) and row["box_rule"] == rule
    assert "MaxBoxAccV2" not in row and "best_threshold" not in row


def test_lid_track3_combination_is_one_cli_line(tmp_path, capsys):
    out = tmp_path / "lid.json"
    status = cli.main(["evaluate", "--model", TINY, "--data", "synthetic:num_images=4,image_size=32,num_classes=4",
                       "--methods", "cam", "--box-rule", "pas", "--method-options", "cam.clamp_negative_weights=true",
                       "--json", str(out), "--no-progress"])
    assert status == 0
    (row,) = json.loads(out.read_text())
    assert row["box_rule"] == "pas" and 0 <= row["BoxAcc"] <= 100
    assert 0 <= row["PeakIoU"] <= 100 and 0 <= row["PeakIoU_pooled_threshold"] <= 1
    assert {"PeakIoU", "PeakIoU_pooled_threshold"} <= set(capsys.readouterr().out.split())


BAD_CLI = [
    (["--box-rule", "otsu"], "--box-rule: unknown box rule 'otsu'"),
    (["--box-rule", "fixed:1.5"], "must be a fraction in [0, 1]"),
    (["--box-rule", "pas", "--fixed-threshold", "0.3"], "--fixed-threshold reads the wsol threshold sweep"),
    (["--method-options", "clamp_negative_weights=true"], "--method-options takes METHOD.OPTION=VALUE"),
    (["--method-options", "cam.clamp=true"], "unknown option(s) 'clamp'"),
]


@pytest.mark.parametrize("extra, fragment", BAD_CLI, ids=[c[0][1] for c in BAD_CLI])
def test_cli_refuses_bad_rules_and_method_options(tmp_path, capsys, extra, fragment):
    argv = ["evaluate", "--model", TINY, "--data", "synthetic:num_images=4,image_size=32,num_classes=4", "--no-progress",
            "--json", str(tmp_path / "x.json")]
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_parse_method_options_literals():
    from camkit.cli.common import parse_method_options

    assert parse_method_options(["cam.clamp_negative_weights=TRUE", "sscam.num_samples=8", "bagcams.weighting=mean"]) \
        == {"cam": {"clamp_negative_weights": True}, "sscam": {"num_samples": 8}, "bagcams": {"weighting": "mean"}}
    assert parse_method_options(None) is None
    assert math.isclose(parse_method_options(["x.y=0.5"])["x"]["y"], 0.5)


def test_the_training_loops_evaluator_takes_a_rule():
    from camkit.evaluation import localization_evaluator

    with pytest.raises(ValueError, match="unknown box rule"):
        localization_evaluator(box_rule="otsu")
    scores = localization_evaluator(("cam",), layers=("features",), box_rule="fixed:0.5")(_Identity(), _Blocks())
    assert scores == {"cam/features/BoxAcc": pytest.approx((200 / 3 + 200 / 3 + 100 / 3) / 3)}


def test_cli_train_scores_its_evaluation_with_the_chosen_rule(tmp_path):
    """``camkit train --box-rule pas``: the periodic evaluation reports PaS's single-threshold BoxAcc, equal to
    ``camkit.evaluate(box_rule="pas")`` of the saved model on the same evaluation split."""
    from camkit.data.open import open_dataset
    from camkit.data.views import EvaluationView
    from camkit.train.checkpoint import load_checkpoint_model

    data = "synthetic:num_images=8,num_classes=2,image_size=32"
    assert cli.main(["train", "cam", "--data", data, "--backbone", "tiny", "--preset", "synthetic-cpu", "--epochs",
                     "1", "--batch-size", "8", "--set", "resize_size=32", "--set", "crop_size=32", "--set",
                     "eval_every=1", "--model-option", "widths=4,8,8,8", "--box-rule", "pas", "--out", str(tmp_path),
                     "--no-progress"]) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["event"] == "eval"][-1]
    (key,) = [k for k in last if k.endswith("/BoxAcc")]
    assert not any(k.endswith("MaxBoxAccV2") for k in last)
    model = load_checkpoint_model(tmp_path)
    _, layer, _ = key.split("/")
    config = _checkpoint_config(tmp_path)
    view = EvaluationView(open_dataset(data, split="test", image_size=32), 32, config["mean"], config["std"])
    rows = evaluate(model, view, methods="cam", layers=layer, progress=False, box_rule="pas")
    assert last[key] == pytest.approx(rows[("cam", layer)]["BoxAcc"])


def _checkpoint_config(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["config"]


def test_cli_explain_boxes_with_the_chosen_rule(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert cli.main(["explain", str(tmp_path / "photo.png"), "--model", TINY, "--out", str(out), "--methods",
                     "gradcam", "--layers", "layer2", "--box-rule", "cicam", "--no-figures"]) == 0
    (record,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert record["box_rule"] == "cicam"
    (entry,) = record["maps"].values()
    assert entry["boxes_input"] == boxes_cicam(np.load(out / entry["npy"])).tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rule", ["pas", "cicam"])
def test_rule_evaluation_on_cuda_equals_the_cpu(rule):
    rows = [evaluate(_Identity().to(device), _Blocks(), methods="cam", layers="features", progress=False,
                     metric_workers=0, box_rule=rule) for device in ("cpu", "cuda")]
    assert rows[0] == rows[1]


class _Ringed(torch.utils.data.Dataset):
    """One 8 x 8 image: channel 0 is 1.0 on a 3 x 3 block (x, y 2..4) and 0.5 on the ring around it; the mask
    is the block."""

    def __len__(self):
        return 1

    def __getitem__(self, index):
        image = torch.zeros(3, 8, 8)
        image[0, 1:6, 1:6] = 0.5
        image[0, 2:5, 2:5] = 1.0
        mask = torch.zeros(8, 8, dtype=torch.uint8)
        mask[2:5, 2:5] = 1
        return {"image": image, "label": 0, "boxes": torch.tensor([[2, 2, 4, 4]]), "mask": mask}


def test_peak_iou_and_its_threshold_on_a_hand_map():
    (row,) = evaluate(_Identity(), _Ringed(), methods="cam", layers="features", progress=False, metric_workers=0,
                      box_rule="pas").values()
    # u = 255 (block), 127 (ring), 0: IoU(t) = 9/64 at t = 0, 9/25 for t in 1..127, 1 for t in 128..255
    assert row["PeakIoU"] == 100.0 and row["PeakIoU_pooled"] == 100.0
    assert row["PeakIoU_pooled_threshold"] == 128 / 255
