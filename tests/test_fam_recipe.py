"""The fam recipe and the cam recipe's TAP option through the shared loop, the ``fam`` explain method,
CAM's head check on TAP models, and bad input (before any hook or file)."""
import json
import os
import socket
import warnings

import pytest
import torch
import torch.nn.functional as F

import camkit
from camkit.data.synthetic import make_synthetic
from camkit.models import FAM, ThresholdedAvgPool, build_fam
from camkit.train.checkpoint import load_checkpoint_model
from camkit.train.loop import train
from camkit.train.recipes import get_recipe

torch.set_num_threads(1)
WIDTHS = (4, 8, 8, 8)


def _config(recipe, **changes):
    return get_recipe(recipe).make_config("synthetic-cpu", **dict(
        dict(epochs=1, batch_size=8, resize_size=32, crop_size=32, progress=False, eval_every=0, log_every=1),
        **changes))


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fam_recipe_trains_through_the_shared_loop_logs_terms_and_resumes_exactly(tmp_path):
    dataset = make_synthetic(16, 3, 32, seed=0)
    options = {"widths": WIDTHS, "norm": "none", "class_weights": [1.0, 2.0, 0.5]}
    straight = train("fam", dataset, backbone="tiny", num_classes=3, config=_config("fam", epochs=2),
                     out_dir=tmp_path / "a", model_options=options)
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "train"]
    assert steps and all({"cls", "spa", "div"} <= set(r) for r in steps)
    train("fam", dataset, backbone="tiny", num_classes=3, config=_config("fam", epochs=2, max_steps=3),
          out_dir=tmp_path / "b", model_options=options)
    resumed = train("fam", dataset, backbone="tiny", num_classes=3, config=_config("fam", epochs=2),
                    out_dir=tmp_path / "b", model_options=options)
    assert torch.allclose(_params(resumed.model), _params(straight.model), atol=1e-6)
    loaded = load_checkpoint_model(tmp_path / "a")
    assert isinstance(loaded, FAM) and torch.equal(loaded.class_weights, torch.tensor([1.0, 2.0, 0.5]))
    assert torch.equal(_params(loaded), _params(straight.model))


def test_cam_recipe_with_tap_trains_and_cam_finds_the_head_without_warning(tmp_path):
    dataset = make_synthetic(16, 3, 32, seed=0)
    result = train("cam", dataset, backbone="tiny", num_classes=3, config=_config("cam"), out_dir=tmp_path,
                   model_options={"widths": WIDTHS, "pool": "tap"})
    model = load_checkpoint_model(tmp_path)
    assert isinstance(model.pool, ThresholdedAvgPool) and model.pool.tau == 0.1
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", camkit.CAMHeadWarning)
        exp = camkit.explain(model, x, methods="cam", normalize=False, upsample=False, target=1)
    # the CAM is W[c] . A on the unthresholded block4 features
    feats = {}
    handle = model.block4.register_forward_hook(lambda m, i, o: feats.update(a=o.detach().double()))
    with torch.no_grad():
        model(x)
    handle.remove()
    ref = torch.einsum("c,bchw->bhw", model.fc.weight[1].detach().double(), feats["a"])
    assert torch.allclose(exp["cam"].double(), ref, atol=1e-5)
    assert result.model is not None


def test_cam_head_check_still_warns_when_logits_are_neither_gap_nor_tap():
    model = get_recipe("cam").build_model("tiny", 3, None, widths=WIDTHS, pool="tap").eval()
    model.pool.tau = 0.5                       # the check pools with the model's own TAP module: still exact
    with warnings.catch_warnings():
        warnings.simplefilter("error", camkit.CAMHeadWarning)
        camkit.explain(model, torch.rand(2, 3, 32, 32), methods="cam")
    model.pool = torch.nn.AdaptiveMaxPool2d(1)  # max pooling is no GAP drop-in
    with pytest.warns(camkit.CAMHeadWarning, match="W @ GAP"):
        camkit.explain(model, torch.rand(2, 3, 32, 32), methods="cam")


def _fam(seed=0, **options):
    torch.manual_seed(seed)
    return build_fam("tiny", num_classes=3, widths=WIDTHS, **options).eval()


@pytest.mark.parametrize("options", [dict(), dict(memory=False), dict(parts=0)])
def test_fam_method_is_the_upsampled_foreground_map_for_every_target(options):
    model = _fam(**options)
    x = torch.randn(2, 3, 32, 32)
    exp = camkit.explain(model, x, methods="fam", normalize=False, target=camkit.TopK(2))
    with torch.no_grad():
        m = model.foreground_map(x)
    assert exp.layers == ["features"]
    ref = F.interpolate(m, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert exp["fam"].shape == (2, 2, 32, 32)
    assert torch.allclose(exp["fam"][:, 0], ref, atol=1e-6) and torch.equal(exp["fam"][:, 0], exp["fam"][:, 1])
    normalised = camkit.explain(model, x, methods="fam")["fam"]
    assert normalised.amin(dim=(1, 2)).abs().max() < 1e-6 and (normalised.amax(dim=(1, 2)) - 1).abs().max() < 1e-6


def test_other_methods_work_on_fams_classifier():
    model = _fam()
    x = torch.randn(2, 3, 32, 32)
    exp = camkit.explain(model, x, methods=["gradcam", "gradcam++", "fam"])
    assert exp.methods == ["gradcam", "gradcam++", "fam"] and exp["gradcam"].shape == (2, 32, 32)
    # CAM applies the classifier rows to X, but FAM's logits pool X with its part attention, not GAP: it warns
    with pytest.warns(camkit.CAMHeadWarning, match="not the decomposition"):
        cam = camkit.explain(model, x, methods="cam", normalize=False, upsample=False, target=0)
    with torch.no_grad():
        feats = model.features(x).double()
    ref = torch.einsum("c,bchw->bhw", model.classifier.weight[0].detach().double(), feats)
    assert torch.allclose(cam["cam"].double(), ref, atol=1e-5)
    with pytest.warns(camkit.CAMHeadWarning):
        assert "fam" not in camkit.explain(model, x, methods="all").methods  # named only


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("build,layers,match", [
    (lambda: get_recipe("cam").build_model("tiny", 3, None, widths=WIDTHS).train(), None, "has none"),
    (lambda: _fam().train(), "features.net.block3", "trunk output 'features'"),
])
def test_fam_method_bad_model_or_layer_raises_before_anything_changes(build, layers, match):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        camkit.explain(model, torch.randn(2, 3, 32, 32), methods="fam", layers=layers)
    assert _hooks(model) == 0 and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("options,match", [
    (dict(pool="max"), "pool must be one of"),
    (dict(pool="tap", tap_tau=1.0), "tau must be"),
    (dict(class_weights=[1.0, 2.0]), "class_weights"),
])
def test_bad_model_options(options, match):
    recipe = "fam" if "class_weights" in options else "cam"
    with pytest.raises(ValueError, match=match):
        get_recipe(recipe).build_model("tiny", 3, None, widths=WIDTHS, **options)


@pytest.mark.parametrize("argv,match", [
    (["train", "fam", "--pool", "tap"], "--pool applies to the cam recipe"),
    (["train", "cam", "--pool", "tap", "--model-option", "pool=gap"], "once"),
])
def test_cli_pool_flag_bad_use(tmp_path, argv, match, capsys):
    from camkit.cli import main
    code = main(argv + ["--data", "synthetic:num_images=8,image_size=32", "--backbone", "tiny",
                        "--out", str(tmp_path / "run"), "--no-progress"])
    assert code != 0 and match in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_trains_cam_with_tap(tmp_path):
    from camkit.cli import main
    code = main(["train", "cam", "--pool", "tap", "--data", "synthetic:num_images=8,num_classes=2,image_size=32",
                 "--backbone", "tiny", "--preset", "synthetic-cpu", "--epochs", "1", "--batch-size", "8",
                 "--set", "resize_size=32", "--set", "crop_size=32", "--set", "eval_every=0",
                 "--model-option", "widths=4,8,8,8", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    assert isinstance(load_checkpoint_model(tmp_path).pool, ThresholdedAvgPool)


def test_cli_trains_fam_and_its_periodic_evaluation_scores_the_fam_map(tmp_path):
    from camkit.cli import main
    code = main(["train", "fam", "--data", "synthetic:num_images=16,num_classes=2,image_size=32", "--backbone", "tiny",
                 "--preset", "synthetic-cpu", "--epochs", "1", "--batch-size", "8", "--set", "resize_size=32",
                 "--set", "crop_size=32", "--set", "eval_every=1", "--model-option", "widths=4,8,8,8",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert evals and "fam/features/MaxBoxAccV2" in evals[-1] and "fam/features/PxAP" in evals[-1]


FAM_DDP_OPTIONS = {"norm": "none", "widths": WIDTHS, "class_weights": [1.0, 2.0, 0.5]}


def _fam_ddp_worker(rank, world, port, out, config_dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from camkit.train.recipes import TrainConfig
    try:
        data = make_synthetic(13, num_classes=3, image_size=32, seed=5)   # last batch of 1: a rank gets none
        result = train("fam", data, backbone="tiny", num_classes=3, config=TrainConfig.from_dict(config_dict),
                       model_options=FAM_DDP_OPTIONS, out_dir=os.path.join(out, "run"))
        torch.save(_params(result.model), os.path.join(out, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_fam_two_gloo_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _config("fam", epochs=2, batch_size=4, lr=0.1)
    mp.spawn(_fam_ddp_worker, args=(2, port, str(tmp_path), config.to_dict()), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(rank0, rank1)
    single = train("fam", make_synthetic(13, num_classes=3, image_size=32, seed=5), backbone="tiny",
                   num_classes=3, config=config, model_options=FAM_DDP_OPTIONS)
    torch.testing.assert_close(rank0, _params(single.model), rtol=1e-4, atol=1e-5)
    torch.manual_seed(config.seed)                                               # the loop's initialisation
    initial = _params(build_fam("tiny", 3, **FAM_DDP_OPTIONS))
    assert float((_params(single.model) - initial).abs().max()) > 1e-3        # training moved the weights
