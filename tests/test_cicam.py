"""CI-CAM: pool update, enhancement, non-local block, combination weights, model round trip."""
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camkit
from camkit.methods.combinational import combination_weights, combinational_cam
from reference_methods import slow_standardize
from camkit.models.cicam import (
    CICAM, CausalContextPool, NonLocalBlock, build_cicam, correct_class_sum, standardize_per_class,
    vgg16_cicam_features,
)


# -- slow float64 references, written from the definitions -------------------------------------



def slow_update(q, class_maps, logits, labels, lam=0.01, eps=1e-5):
    t = torch.zeros_like(q, dtype=torch.float64)
    for i in range(class_maps.shape[0]):
        if int(logits[i].argmax()) == int(labels[i]):
            t[int(labels[i])] += class_maps[i, int(labels[i])].double()
    return slow_standardize(q.double() + lam * slow_standardize(t, eps), eps)


def slow_enhance(features, classes, pool, weight, bias):
    b, c, h, w = features.shape
    n = pool.shape[0]
    onehot_context = torch.zeros(b, n, h, w, dtype=torch.float64)
    for i in range(b):
        onehot_context[i, int(classes[i])] = pool[int(classes[i])].double()
    a = F.conv2d(onehot_context, weight.double(), bias.double())
    return features.double() * (1 + a)


def slow_ccam(maps, logits, h, target=None):
    out = torch.zeros(maps.shape[0], *maps.shape[2:], dtype=torch.float64)
    for i in range(maps.shape[0]):
        order = sorted(range(logits.shape[1]), key=lambda k: -float(logits[i, k]))
        if target is not None:
            order.remove(int(target[i]))
            order = [int(target[i])] + order
        for rank, k in enumerate(order):
            out[i] += float(h[rank]) * maps[i, k].double()
        out[i] -= out[i].min()
    return out


# -- standardisation and pool update -----------------------------------------------------------

def test_standardize_matches_slow_loop_and_batchnorm2d():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, generator=g) * torch.tensor([0.1, 1, 10, 100, 0.0]).view(5, 1, 1)
    got = standardize_per_class(x)
    torch.testing.assert_close(got.double(), slow_standardize(x), rtol=1e-5, atol=1e-6)
    bn = nn.BatchNorm2d(5).train()
    torch.testing.assert_close(got, bn(x[None])[0].detach())
    assert torch.equal(got[4], torch.zeros(3, 4))       # a constant class channel becomes zeros


def test_first_update_hand_oracle_shows_lambda_and_eps():
    # one class, T = [0, 2] on a 1x2 map: BN(T) = [-1, 1] / sqrt(1 + eps); the second BN of
    # 0.01 * BN(T) rescales to a / sqrt(a^2 + eps) with a = 0.01 / sqrt(1 + eps).
    pool = CausalContextPool(num_classes=1, channels=2, size=(1, 2))
    maps = torch.tensor([[[[0.0, 2.0]]]])
    pool.update(maps, logits=torch.tensor([[5.0]]), labels=torch.tensor([0]))
    a = 0.01 / math.sqrt(1 + 1e-5)
    expected = a / math.sqrt(a * a + 1e-5)                 # 0.95346...
    torch.testing.assert_close(pool.pool, torch.tensor([[[-expected, expected]]]), rtol=1e-5, atol=1e-6)
    assert abs(expected - 0.95346) < 1e-4


def test_update_rate_sets_how_fast_the_pool_moves():
    maps_a = torch.tensor([[[[0.0, 2.0, 1.0]]]])
    maps_b = torch.tensor([[[[3.0, 0.0, 1.0]]]])
    moved = {}
    for lam in (0.01, 1.0):
        pool = CausalContextPool(1, 2, (1, 3), update_rate=lam)
        pool.update(maps_a, torch.tensor([[1.0]]), torch.tensor([0]))
        before = pool.pool.clone()
        pool.update(maps_b, torch.tensor([[1.0]]), torch.tensor([0]))
        moved[lam] = (pool.pool - before).abs().max().item()
        torch.testing.assert_close(pool.pool.double(), slow_update(before, maps_b, torch.tensor([[1.0]]),
                                                                   torch.tensor([0]), lam), rtol=1e-5, atol=1e-6)
    assert moved[0.01] < 0.1 < 1.0 < moved[1.0]


def test_correct_only_accumulation_matches_loop():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(6, 3, 2, 2, generator=g)
    logits = torch.tensor([[3., 0, 0], [0, 3, 0], [3, 0, 0], [0, 0, 3], [0, 3, 0], [0, 0, 3]])
    labels = torch.tensor([0, 1, 1, 2, 0, 2])            # samples 2 and 4 are misclassified
    total = correct_class_sum(maps, logits, labels)
    expected = torch.zeros(3, 2, 2)
    expected[0] = maps[0, 0]
    expected[1] = maps[1, 1]
    expected[2] = maps[3, 2] + maps[5, 2]
    torch.testing.assert_close(total, expected)


def test_misclassified_samples_add_nothing_and_several_updates_match_loop():
    g = torch.Generator().manual_seed(2)
    pool = CausalContextPool(3, 4, (2, 3))
    q = torch.zeros(3, 2, 3, dtype=torch.float64)
    for step in range(4):
        maps = torch.randn(5, 3, 2, 3, generator=g)
        logits = torch.randn(5, 3, generator=g)
        labels = torch.randint(3, (5,), generator=g)
        labels[0] = (logits[0].argmax() + 1) % 3       # at least one wrong
        pool.update(maps, logits, labels)
        q = slow_update(q, maps, logits, labels)
        torch.testing.assert_close(pool.pool.double(), q, rtol=1e-5, atol=1e-5)
    # adding a misclassified sample to a batch does not change the update
    a, b = CausalContextPool(3, 4, (2, 3)), CausalContextPool(3, 4, (2, 3))
    maps = torch.randn(3, 3, 2, 3, generator=g)
    logits = torch.tensor([[2., 0, 0], [0, 2, 0], [0, 0, 2]])
    a.update(maps[:2], logits[:2], torch.tensor([0, 1]))
    b.update(maps, logits, torch.tensor([0, 1, 0]))
    assert torch.equal(a.pool, b.pool)


def test_enhancement_matches_slow_one_hot_conv():
    g = torch.Generator().manual_seed(3)
    pool = CausalContextPool(4, 6, (3, 5))
    with torch.no_grad():
        pool.pool.copy_(torch.randn(4, 3, 5, generator=g))
        pool.projection.weight.copy_(torch.randn(6, 4, 1, 1, generator=g))
        pool.projection.bias.copy_(torch.randn(6, generator=g))
    features = torch.randn(3, 6, 3, 5, generator=g)
    classes = torch.tensor([2, 0, 2])
    got = pool(features, classes)
    expected = slow_enhance(features, classes, pool.pool, pool.projection.weight, pool.projection.bias)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    # a zero pool leaves only the projection bias: F * (1 + b)
    pool.pool.zero_()
    torch.testing.assert_close(pool(features, classes),
                               features * (1 + pool.projection.bias.detach().view(1, -1, 1, 1)))


# -- non-local block ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_non_local_block_is_identity_at_init(mode):
    block = NonLocalBlock(16)
    block.train(mode == "train")
    x = torch.randn(2, 16, 5, 4)
    assert torch.equal(block(x), x)


def test_non_local_block_matches_slow_attention():
    torch.manual_seed(4)
    block = NonLocalBlock(8, reduction=4).eval()
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-1, 1)
        block.norm.running_mean.uniform_(-1, 1)
        block.norm.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 3, 2)
    got = block(x).double()
    d = {k: v.double() for k, v in block.state_dict().items()}
    conv = lambda t, name: F.conv2d(t, d[name + ".weight"], d[name + ".bias"])  # noqa: E731
    xd = x.double()
    q, k, v = (conv(xd, n).flatten(2) for n in ("query", "key", "value"))
    n = xd.shape[2] * xd.shape[3]
    y = torch.zeros(2, 8, n, dtype=torch.float64)
    for b in range(2):
        for i in range(n):
            energies = [float((q[b, :, i] * k[b, :, j]).sum()) for j in range(n)]
            top = max(energies)
            weights = [math.exp(e - top) for e in energies]
            total = sum(weights)
            for j in range(n):
                y[b, :, i] += weights[j] / total * v[b, :, j]
    mixed = conv(y.view(2, 8, 3, 2), "mix")
    normed = ((mixed - d["norm.running_mean"].view(1, -1, 1, 1)) / torch.sqrt(d["norm.running_var"].view(1, -1, 1, 1)
              + 1e-5) * d["norm.weight"].view(1, -1, 1, 1) + d["norm.bias"].view(1, -1, 1, 1))
    torch.testing.assert_close(got, xd + normed, rtol=1e-6, atol=1e-6)


# -- combination weights and the combinational CAM ----------------------------------------------

@pytest.mark.parametrize("scheme, options, expected", [
    ("nlccam-quadratic", {}, [1, 0, 0, -0.25, -1]),                       # thr = 5 // 2 = 2
    ("nlccam-quadratic", {"threshold": 3}, [1, 0.25, 0, 0, -1]),
    ("cicam-quadratic", {}, [0, -1 / 16, -1 / 4, -9 / 16, -1]),
    ("linear", {}, [1, 0.5, 0, -0.5, -1]),
    ("top1-minus-bottom", {}, [1, 0, 0, 0, -1]),
    ("top1-minus-bottom", {"num_bottom": 2}, [1, 0, 0, -0.5, -0.5]),
    ("sum_1", {"num_bottom": 3}, [1, 0, 0, -1 / 3, -2 / 3]),
    ("sum_1", {}, [1, -0.1, -0.2, -0.3, -0.4]),                            # M = min(20, N) = 5
    ("top1", {}, [1, 0, 0, 0, 0]),
])
def test_combination_weights_hand_written(scheme, options, expected):
    got = combination_weights(5, scheme, **options, dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_sum_1_negative_weights_sum_to_one_with_twenty_lowest():
    h = combination_weights(200, "sum_1", dtype=torch.float64)
    assert h[0] == 1 and torch.all(h[1:180] == 0)
    torch.testing.assert_close(h[180:].sum(), torch.tensor(-1.0, dtype=torch.float64))
    torch.testing.assert_close(h[-1], torch.tensor(-2 / 20, dtype=torch.float64))


def test_unknown_scheme_and_wrong_custom_length_explain_themselves():
    with pytest.raises(ValueError, match="cicam-quadratic"):
        combination_weights(4, "quadratic")
    with pytest.raises(ValueError, match="one weight per rank"):
        combination_weights(4, [1, 0, -1])


def test_combinational_cam_hand_oracle():
    maps = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]], [[4.0, 4.0]]]])      # (1, 3, 1, 2)
    logits = torch.tensor([[0.5, 2.0, -1.0]])                              # ranking: class 1, 0, 2
    # linear weights [1, 0, -1]: M1 - M2 = [-4, -2] -> minus min -> [0, 2]
    got = combinational_cam(maps, logits, "linear")
    torch.testing.assert_close(got, torch.tensor([[[0.0, 2.0]]]))
    # GT-known with target class 2 at rank 0: ranking 2, 1, 0 -> M2 - M0 = [3, 4] -> [0, 1]
    got = combinational_cam(maps, logits, "linear", targets=torch.tensor([2]))
    torch.testing.assert_close(got, torch.tensor([[[0.0, 1.0]]]))


@pytest.mark.parametrize("scheme", ["nlccam-quadratic", "cicam-quadratic", "linear", "top1-minus-bottom",
                                    "sum_1"])
def test_combinational_cam_matches_slow_reference_and_is_permutation_invariant(scheme):
    g = torch.Generator().manual_seed(5)
    maps = torch.randn(3, 7, 4, 5, generator=g, dtype=torch.float64)
    logits = torch.randn(3, 7, generator=g, dtype=torch.float64)
    h = combination_weights(7, scheme, dtype=torch.float64)
    torch.testing.assert_close(combinational_cam(maps, logits, scheme), slow_ccam(maps, logits, h))
    targets = torch.tensor([4, 0, 6])
    torch.testing.assert_close(combinational_cam(maps, logits, scheme, targets=targets),
                               slow_ccam(maps, logits, h, targets))
    two = combinational_cam(maps, logits, scheme, targets=torch.stack([targets, logits.argmax(1)], 1))
    torch.testing.assert_close(two[:, 0], slow_ccam(maps, logits, h, targets))
    torch.testing.assert_close(two[:, 1], slow_ccam(maps, logits, h))
    perm = torch.randperm(7, generator=g)
    torch.testing.assert_close(combinational_cam(maps[:, perm], logits[:, perm], scheme),
                               combinational_cam(maps, logits, scheme))
    assert torch.all(combinational_cam(maps, logits, scheme).amin(dim=(1, 2)) == 0)


# -- the CI-CAM model ----------------------------------------------------------------------------

def tiny_cicam(num_classes=3, seed=0):
    torch.manual_seed(seed)
    return build_cicam("tiny", num_classes, input_size=16, widths=(4, 8, 8, 8))


def test_forward_branches_and_update_only_when_training_with_labels():
    model = tiny_cicam()
    with torch.no_grad():
        model.context.pool.normal_()
        model.context.projection.weight.normal_()
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    out = model(x, torch.tensor([0, 1, 2, 0]))
    feats = model.features(x)
    up = model.classifier(feats.mean(dim=(2, 3)))
    torch.testing.assert_close(out["up"], up)
    expected_fe = slow_enhance(feats, up.argmax(1), model.context.pool, model.context.projection.weight,
                               model.context.projection.bias).float()
    torch.testing.assert_close(out["enhanced"], expected_fe, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["down"], model.classifier(expected_fe.mean(dim=(2, 3))), rtol=1e-4, atol=1e-5)
    assert out["logits"] is out["down"]
    before = model.context.pool.clone()
    model(x, torch.tensor([0, 1, 2, 0]))                        # eval: no update
    assert torch.equal(model.context.pool, before)
    model.train()
    model(x)                                                    # no labels: no update
    assert torch.equal(model.context.pool, before)
    labels = out["up"].argmax(1)                                # all correct -> the pool moves
    out = model(x, labels)
    expected = slow_update(before, model.class_maps(out["features"].detach()), out["up"], labels)
    torch.testing.assert_close(model.context.pool.double(), expected, rtol=1e-4, atol=1e-4)


def test_training_step_backpropagates_through_both_branches_after_update():
    model = tiny_cicam().train()
    x = torch.randn(4, 3, 16, 16)
    out = model(x, torch.randint(3, (4,)))
    loss = F.cross_entropy(out["up"], torch.zeros(4, dtype=torch.long)) + \
        F.cross_entropy(out["down"], torch.zeros(4, dtype=torch.long))
    loss.backward()                                             # the in-place pool update must not break it
    assert model.context.projection.weight.grad is not None
    assert model.context.pool.grad is None and not model.context.pool.requires_grad


def test_state_round_trips_through_save_and_load_including_pool():
    model = tiny_cicam(seed=1).train()
    for _ in range(3):
        x = torch.randn(6, 3, 16, 16)
        with torch.no_grad():
            labels = model(x)["up"].argmax(1)
        model(x, labels)
    assert model.context.pool.abs().sum() > 0 and "context.pool" in model.state_dict()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = tiny_cicam(seed=2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.context.pool, model.context.pool)
    model.eval(), fresh.eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh(x)["down"], model(x)["down"])


def test_explain_plain_and_causal_methods_on_the_down_branch():
    model = tiny_cicam(seed=3)
    with torch.no_grad():
        model.context.pool.normal_()
        model.context.projection.weight.normal_()
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    exp = camkit.explain(model, x, methods=("cam", "causal"), output="down", upsample=False, normalize=False)
    assert exp.layers == ["enhanced"]
    out = model(x)
    fe = out["enhanced"]
    maps = torch.einsum("kc,bchw->bkhw", model.classifier.weight, fe).detach()
    top = out["down"].argmax(1)
    torch.testing.assert_close(exp.maps[("cam", "enhanced")], maps[torch.arange(2), top])
    expected = combinational_cam(maps, out["down"].detach(), "cicam-quadratic")
    torch.testing.assert_close(exp.maps[("causal", "enhanced")], expected, rtol=1e-4, atol=1e-5)
    # GT-known: the given class is ranked first; label-free ("predicted") ignores it
    target = (top + 1) % 3
    exp = camkit.explain(model, x, methods="causal", output="down", target=target, upsample=False,
                         normalize=False, method_options={"causal": {"weights": "linear"}})
    torch.testing.assert_close(exp.maps[("causal", "enhanced")],
                               combinational_cam(maps, out["down"].detach(), "linear", targets=target),
                               rtol=1e-4, atol=1e-5)
    exp = camkit.explain(model, x, methods="causal", output="down", target=target, upsample=False,
                         normalize=False, method_options={"causal": {"weights": "linear", "ranking": "predicted"}})
    torch.testing.assert_close(exp.maps[("causal", "enhanced")],
                               combinational_cam(maps, out["down"].detach(), "linear"), rtol=1e-4, atol=1e-5)


def test_vgg16_variants_structure_and_torchvision_weights():
    # a torchvision vgg16 state dict: convs at features.{0,2,5,7,10,12,14,17,19,21,24,26,28}
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    channels = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    g = torch.Generator().manual_seed(0)
    reference = {}
    for i, index in enumerate(indices):
        reference[f"features.{index}.weight"] = torch.randn(channels[i + 1], channels[i], 3, 3, generator=g)
        reference[f"features.{index}.bias"] = torch.randn(channels[i + 1], generator=g)
    reference["classifier.0.weight"] = torch.zeros(2, 2)      # ignored
    cub = vgg16_cicam_features("cub", weights=reference)
    names = [n for n, _ in cub.named_children()]
    assert [n for n in names if n.startswith("nonlocal")] == ["nonlocal2", "nonlocal3", "nonlocal4", "nonlocal5"]
    assert "pool5" not in names and names[-1] == "nonlocal5"
    assert all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for n, m in cub.named_children()
               if n.startswith("relu"))
    assert torch.equal(cub.conv1_1.weight, reference["features.0.weight"])
    assert torch.equal(cub.conv5_3.bias, reference["features.28.bias"])
    assert torch.equal(cub.conv3_1.weight, reference["features.10.weight"])
    assert cub.nonlocal2.value.in_channels == 128 and cub.nonlocal3.value.in_channels == 256
    imagenet = vgg16_cicam_features("imagenet")
    names = [n for n, _ in imagenet.named_children()]
    assert "nonlocal2" not in names and names[-4:] == ["conv6", "relu6", "conv7", "relu7"]
    with torch.no_grad():
        assert cub(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 2, 2)
        assert imagenet(torch.zeros(1, 3, 32, 32)).shape == (1, 1024, 2, 2)


def test_build_cicam_names_new_layers_for_the_recipe():
    model = tiny_cicam()
    names = [n for n, _ in model.named_parameters()]
    assert "features.net.fc.weight" not in names           # the backbone's own head is removed
    assert model.new_layer_prefixes[:2] == ("context", "classifier")
    assert isinstance(model, CICAM) and model.context.size == (4, 4)


def test_pool_adopts_first_feature_size_and_loads_a_pool_of_another_size():
    pool = CausalContextPool(2, 3, (4, 4))
    maps = torch.randn(2, 2, 3, 5)
    pool.update(maps, torch.tensor([[1.0, 0], [0, 1.0]]), torch.tensor([0, 1]))
    assert pool.size == (3, 5)
    expected = slow_update(torch.zeros(2, 3, 5), maps, torch.tensor([[1.0, 0], [0, 1.0]]), torch.tensor([0, 1]))
    torch.testing.assert_close(pool.pool.double(), expected, rtol=1e-5, atol=1e-5)
    other = CausalContextPool(2, 3, (7, 7))
    other.load_state_dict(pool.state_dict())
    assert torch.equal(other.pool, pool.pool)


def test_recipe_loss_forward_and_parameter_groups():
    from camkit.train.cicam_recipe import cicam_forward, cicam_logits, cicam_loss, cicam_param_groups
    from camkit.train.recipes import get_recipe
    recipe = get_recipe("cicam")
    assert recipe.forward is cicam_forward and recipe.logits is cicam_logits
    model = tiny_cicam().train()
    batch = {"image": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 1, 2, 0])}
    with torch.no_grad():
        batch["label"] = model(batch["image"])["up"].argmax(1)
    out = cicam_forward(model, batch)
    assert model.context.pool.abs().sum() > 0                     # the training forward updated the pool
    terms = cicam_loss(out, batch)
    torch.testing.assert_close(terms["loss"], F.cross_entropy(out["up"], batch["label"])
                               + F.cross_entropy(out["down"], batch["label"]))
    assert cicam_logits(out) is out["down"]
    groups = cicam_param_groups(model, recipe.make_config("cub-vgg16"))
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    scales = {g["name"]: g["lr_scale"] for g in groups}
    assert scales == {"backbone": 0.1, "new": 1.0}
    new_names = {n for n, p in model.named_parameters() if any(p is q for g in groups if g["name"] == "new"
                                                                for q in g["params"])}
    assert new_names == {"classifier.weight", "classifier.bias"}   # the projection trains with the backbone


def test_shared_training_loop_runs_the_cicam_recipe_and_fills_the_pool(tmp_path):
    from camkit.data.synthetic import make_synthetic
    from camkit.train.loop import train
    from camkit.train.recipes import get_recipe
    dataset = make_synthetic(16, 3, 32, seed=0)
    config = get_recipe("cicam").make_config("synthetic-cpu", epochs=1, batch_size=8, resize_size=32,
                                             crop_size=32, progress=False, eval_every=0)
    result = train("cicam", dataset, backbone="tiny", num_classes=3, config=config, out_dir=tmp_path,
                   model_options={"widths": (4, 8, 8, 8)})
    model = result.model
    assert model.context.size == (8, 8) and model.context.pool.abs().sum() > 0
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=False)
    state = saved["model"] if "model" in saved else saved
    fresh = build_cicam("tiny", 3, widths=(4, 8, 8, 8))         # pool built at another size
    fresh.load_state_dict(state)
    assert torch.equal(fresh.context.pool, model.context.pool)
