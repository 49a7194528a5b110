"""KD-CI-CAM teacher recipes (camkit.train.kd_recipe): forward, losses against hand-written references,
bad options, and a one-epoch smoke run of each teacher through the shared loop."""
import json

import pytest
import torch

from camkit.train.kd_masks import teacher_masks
from camkit.train.kd_recipe import (
    build_kd_cls_teacher, build_kd_loc_teacher, kd_cls_teacher_loss, kd_loc_teacher_loss, kd_teacher_forward,
)
from camkit.train.recipes import StepState, get_recipe

torch.set_num_threads(1)
WIDTHS = (4, 8, 8, 8)


def _teacher(kind="cls", seed=0, **options):
    torch.manual_seed(seed)
    build = build_kd_cls_teacher if kind == "cls" else build_kd_loc_teacher
    model = build("tiny", 3, input_size=16, widths=WIDTHS, **options)
    with torch.no_grad():
        model.context.pool.normal_()
        model.context.projection.weight.normal_()
    return model


def _batch(seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(4, 3, size, size, generator=g), "label": torch.tensor([0, 1, 2, 1]),
            "index": torch.arange(4)}


def _ce(logits, labels):
    """Cross-entropy from the definition, float64, mean over the batch."""
    z = logits.double()
    log_p = z - z.exp().sum(dim=1, keepdim=True).log()
    return -log_p[torch.arange(len(labels)), labels].mean()


def _state(model):
    from camkit.train.cicam_recipe import CICAM_CONFIG
    return StepState(epoch=0, step=0, global_step=0, model=model, config=CICAM_CONFIG)


def test_forward_adds_masked_logits_without_context_enhancement():
    model = _teacher("loc").train()
    batch = _batch()
    out = kd_teacher_forward(model, batch)
    assert out["fg"].shape == (4, 1, 16, 16) and out["s_fg"].shape == (4, 3) and out["s_bg"].shape == (4, 3)
    assert torch.equal(out["fg"] + out["bg"], torch.ones_like(out["fg"]))
    # s_fg is backbone -> GAP -> classifier on x * fg, recomputed here by hand (same train-mode BN)
    with torch.no_grad():
        feats = model.features(batch["image"] * out["fg"])
        expected = feats.mean(dim=(2, 3)) @ model.classifier.weight.t() + model.classifier.bias
        enhanced = model.context(feats, expected.argmax(dim=1)).mean(dim=(2, 3)) @ model.classifier.weight.t() \
            + model.classifier.bias
    torch.testing.assert_close(out["s_fg"].detach(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(enhanced, expected, atol=1e-4)          # the enhancement would change it
    # the masks are the down branch's, from this forward
    fg, _ = teacher_masks(out, model.classifier.weight, 16, model.kd_options["seg_thr"], model.combination)
    assert torch.equal(fg, out["fg"])


def test_cls_teacher_computes_only_the_foreground_and_eval_adds_nothing():
    model = _teacher("cls").train()
    out = kd_teacher_forward(model, _batch())
    assert "s_fg" in out and "s_bg" not in out
    model.eval()
    with torch.no_grad():
        out = kd_teacher_forward(model, _batch())
    assert "fg" not in out and "s_fg" not in out


def _ccam_reference(out, weight, labels_unused=None):
    """cicam-quadratic CCAM from the definition: rank classes by the down logits, h_r = -(r/(N-1))^2."""
    maps = torch.einsum("kc,bchw->bkhw", weight.double(), out["enhanced"].double())
    b, n = out["down"].shape
    result = []
    for i in range(b):
        order = torch.argsort(out["down"][i].double(), descending=True, stable=True)
        m = sum(-(r / (n - 1)) ** 2 * maps[i, order[r]] for r in range(n))
        result.append(m - m.min())
    return torch.stack(result)


@pytest.mark.parametrize("area_at", ["crop", "feature"])
def test_cls_teacher_loss_matches_the_definition(area_at):
    model = _teacher("cls", fore_weight=0.7, area_weight=0.3, area_at=area_at).train()
    batch = _batch(1)
    out = kd_teacher_forward(model, batch)
    terms = kd_cls_teacher_loss(out, batch, _state(model))
    y = batch["label"]
    ccam = _ccam_reference(out, model.classifier.weight)
    if area_at == "crop":
        ccam = torch.nn.functional.interpolate(ccam.unsqueeze(1), size=(16, 16), mode="bilinear",
                                               align_corners=False).squeeze(1)
    area = (ccam - ccam.flatten(1).min(dim=1).values.view(-1, 1, 1)).mean()
    expected = _ce(out["up"], y) + _ce(out["down"], y) + 0.7 * _ce(out["s_fg"], y) + 0.3 * area
    torch.testing.assert_close(terms["loss"].double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["area"].double(), area.detach(), rtol=1e-5, atol=1e-6)
    terms["loss"].backward()                      # the area term reaches the classifier and the backbone
    assert model.classifier.weight.grad.abs().sum() > 0


def test_loc_teacher_loss_matches_the_definition():
    model = _teacher("loc", diff_weight=0.25, aux_weight=2.0).train()
    batch = _batch(2)
    out = kd_teacher_forward(model, batch)
    terms = kd_loc_teacher_loss(out, batch, _state(model))
    y = batch["label"]
    diff = out["s_fg"] - out["s_bg"]
    expected = _ce(out["up"], y) + _ce(out["down"], y) + 0.25 * _ce(diff, y) + 2.0 * _ce((diff + out["down"]) / 2, y)
    torch.testing.assert_close(terms["loss"].double(), expected.detach(), rtol=1e-5, atol=1e-6)
    with_paper = build_kd_loc_teacher("tiny", 3, input_size=16, widths=WIDTHS, diff_weight=1.0, aux_weight=0.0)
    assert with_paper.kd_options["diff_weight"] == 1.0 and with_paper.kd_options["aux_weight"] == 0.0


def test_defaults_are_the_released_runs():
    assert _teacher("cls").kd_options == dict(seg_thr=0.08, fore_weight=1.0, area_weight=0.04, area_at="crop",
                                              masks=("fg",))
    assert _teacher("loc").kd_options == dict(seg_thr=0.0, diff_weight=0.5, aux_weight=0.5, masks=("fg", "bg"))


@pytest.mark.parametrize("kind,options,message", [
    ("cls", {"seg_thr": 1.0}, "seg_thr must be"),
    ("loc", {"seg_thr": -0.5}, "seg_thr must be"),
    ("cls", {"fore_weight": -1}, "fore_weight must be"),
    ("cls", {"area_weight": float("inf")}, "area_weight must be"),
    ("loc", {"diff_weight": "1"}, "diff_weight must be"),
    ("loc", {"aux_weight": True}, "aux_weight must be"),
    ("cls", {"area_at": "image"}, "area_at must be"),
])
def test_bad_options_are_refused_when_the_model_is_built(kind, options, message):
    build = build_kd_cls_teacher if kind == "cls" else build_kd_loc_teacher
    with pytest.raises(ValueError, match=message):
        build("tiny", 3, input_size=16, widths=WIDTHS, **options)


@pytest.mark.parametrize("name,terms", [("kd-cls-teacher", {"fore", "area"}), ("kd-loc-teacher", {"diff", "aux"})])
def test_each_teacher_trains_one_epoch_through_the_shared_loop(tmp_path, name, terms):
    from camkit.data.synthetic import make_synthetic
    from camkit.train.checkpoint import load_checkpoint_model
    from camkit.train.loop import train
    dataset = make_synthetic(16, 3, 32, seed=0)
    config = get_recipe(name).make_config("synthetic-cpu", epochs=1, batch_size=8, resize_size=32, crop_size=32,
                                          progress=False, eval_every=0, log_every=1)
    result = train(name, dataset, backbone="tiny", num_classes=3, config=config, out_dir=tmp_path,
                   model_options={"widths": WIDTHS, "seg_thr": 0.1})
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if terms <= set(r)]
    assert steps, records
    assert all(torch.isfinite(torch.tensor([r[t] for t in terms])).all() for r in steps)
    assert result.model.context.pool.abs().sum() > 0
    reloaded = load_checkpoint_model(result.checkpoint)
    assert reloaded.kd_options["seg_thr"] == 0.1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x)["down"], result.model.eval()(x)["down"])
