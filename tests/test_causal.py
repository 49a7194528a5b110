"""Post-hoc causal context: fit_context leaves the model alone, Q estimation, training, the causal method."""

import pytest
import torch

import camkit
from camkit.causal import CausalContext, fit_context
from camkit.methods.combinational import combinational_cam
from camkit.models.backbones import TinyCNN
from reference_methods import slow_standardize


def make_model_and_loader(seed=0, batches=4, batch=8, classes=3):
    torch.manual_seed(seed)
    model = TinyCNN(num_classes=classes, widths=(4, 8, 8, 8))
    g = torch.Generator().manual_seed(seed + 100)
    loader = [(torch.randn(batch, 3, 16, 16, generator=g), torch.randint(classes, (batch,), generator=g))
              for _ in range(batches)]
    # make about half the labels agree with the model so that the pool receives samples
    model.eval()
    with torch.no_grad():
        loader = [(x, torch.where(torch.arange(len(y)) % 2 == 0, model(x).argmax(1), y)) for x, y in loader]
    return model, loader


def test_fit_context_leaves_the_model_bit_identical():
    model, loader = make_model_and_loader()
    model.train()
    model.block2.eval()                                      # mixed training flags
    model.block1[0].weight.requires_grad_(False)             # a frozen parameter
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)   # a pre-existing gradient
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    context = fit_context(model, "block4", loader, epochs=2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key            # includes BatchNorm running statistics
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
    for name, parameter in model.named_parameters():
        assert (parameter.grad is None) == (grads[name] is None), name
        if parameter.grad is not None:
            assert torch.equal(parameter.grad, grads[name])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert isinstance(context, CausalContext) and context.layer == "block4"


@pytest.mark.parametrize("calibration", ["ema", "mean"])
def test_pool_estimate_matches_slow_reference_over_the_calibration_set(calibration):
    model, loader = make_model_and_loader(seed=1)
    context = fit_context(model, "block4", loader, epochs=0, calibration=calibration)
    model.eval()
    captured = {}
    handle = model.block4.register_forward_hook(lambda m, i, o: captured.__setitem__("f", o.detach().clone()))
    q = torch.zeros(3, 4, 4, dtype=torch.float64)
    whole = torch.zeros_like(q)
    correct = 0
    try:
        with torch.no_grad():
            for x, y in loader:
                logits = model(x)
                maps = torch.einsum("kc,bchw->bkhw", model.fc.weight.double(), captured["f"].double())
                t = torch.zeros_like(q)
                for i in range(len(y)):
                    if int(logits[i].argmax()) == int(y[i]):
                        t[int(y[i])] += maps[i, int(y[i])]
                        correct += 1
                q = slow_standardize(q + 0.01 * slow_standardize(t))
                whole += t
    finally:
        handle.remove()
    expected = q if calibration == "ema" else slow_standardize(whole)
    torch.testing.assert_close(context.pool.pool.double(), expected, rtol=1e-4, atol=1e-4)
    assert context.info["correct"] == correct and context.info["samples"] == 32
    assert context.info["calibration"] == calibration
    torch.testing.assert_close(context.head_bias, model.fc.bias.detach())


def test_mean_calibration_is_independent_of_batch_order_and_ema_is_not():
    model, loader = make_model_and_loader(seed=1)
    reordered = list(reversed(loader))
    mean = [fit_context(model, "block4", data, epochs=0).pool.pool for data in (loader, reordered)]
    ema = [fit_context(model, "block4", data, epochs=0, calibration="ema").pool.pool for data in (loader, reordered)]
    torch.testing.assert_close(mean[0], mean[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ema[0], ema[1], atol=1e-3)


def test_untrained_zero_projection_gives_the_plain_combinational_cam():
    model, loader = make_model_and_loader(seed=2)
    context = fit_context(model, "block4", loader, epochs=0)
    x = loader[0][0]
    plain = camkit.explain(model, x, methods="causal", layers="block4", upsample=False, normalize=False)
    corrected = camkit.explain(model, x, methods="causal", layers="block4", context=context, upsample=False,
                               normalize=False)
    torch.testing.assert_close(corrected.maps[("causal", "block4")], plain.maps[("causal", "block4")])


def enhanced_block4(model, context, x):
    """The eval-mode model's block4 features enhanced by ``context`` for its top-1 class, and the logits."""
    model.eval()
    feats = {}
    handle = model.block4.register_forward_hook(lambda m, i, o: feats.__setitem__("f", o.detach().clone()))
    with torch.no_grad():
        logits = model(x)
        enhanced = context.pool(feats["f"], logits.argmax(1))
    handle.remove()
    return enhanced, logits


def test_trained_context_changes_down_branch_and_matches_manual_computation(tmp_path):
    model, loader = make_model_and_loader(seed=3)
    context = fit_context(model, "block4", loader, epochs=4, lr=0.05)
    losses = context.info["train_loss"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert context.pool.projection.weight.abs().sum() > 0
    x = loader[1][0]
    exp = camkit.explain(model, x, methods="causal", layers="block4", context=context, upsample=False,
                         normalize=False, method_options={"causal": {"weights": "linear"}})
    fe, logits = enhanced_block4(model, context, x)
    down = fe.mean(dim=(2, 3)) @ model.fc.weight.detach().t() + model.fc.bias.detach()
    maps = torch.einsum("kc,bchw->bkhw", model.fc.weight.detach(), fe)
    expected = combinational_cam(maps, down, "linear", targets=logits.argmax(1))
    torch.testing.assert_close(exp.maps[("causal", "block4")], expected, rtol=1e-4, atol=1e-5)
    # save / load gives the same maps
    path = tmp_path / "context.pt"
    context.save(path)
    loaded = CausalContext.load(path)
    assert torch.equal(loaded.pool.pool, context.pool.pool)
    again = camkit.explain(model, x, methods="causal", layers="block4", context=loaded, upsample=False,
                           normalize=False, method_options={"causal": {"weights": "linear"}})
    torch.testing.assert_close(again.maps[("causal", "block4")], exp.maps[("causal", "block4")])


def test_context_on_the_wrong_layer_names_the_fitted_layer():
    model, loader = make_model_and_loader(seed=4)
    context = fit_context(model, "block4", loader, epochs=0)
    with pytest.raises(ValueError, match="block4"):
        camkit.explain(model, loader[0][0], methods="causal", layers="block1", context=context,
                       head=torch.zeros(3, 4))


def test_dict_batches_with_transform_are_accepted():
    model, loader = make_model_and_loader(seed=5, batches=2)
    dict_loader = [{"image": x * 2, "label": y} for x, y in loader]
    a = fit_context(model, "block4", loader, epochs=1)
    b = fit_context(model, "block4", dict_loader, epochs=1, transform=lambda t: t / 2)
    torch.testing.assert_close(a.pool.pool, b.pool.pool)
    torch.testing.assert_close(a.pool.projection.weight, b.pool.projection.weight)


def test_predict_logits_is_the_down_branch_and_leaves_flags():
    model, loader = make_model_and_loader(seed=6, batches=2)
    context = fit_context(model, "block4", loader, epochs=2, lr=0.05)
    model.train()
    x = loader[0][0]
    got = context.predict_logits(model, x)
    assert model.training and model.block1.training
    fe, _ = enhanced_block4(model, context, x)
    torch.testing.assert_close(got, fe.mean(dim=(2, 3)) @ model.fc.weight.detach().t() + model.fc.bias.detach())


@pytest.mark.filterwarnings("ignore::camkit.CAMHeadWarning")  # block4.0 is before BN and ReLU
def test_context_refuses_another_layer_with_the_same_channels():
    model, loader = make_model_and_loader(seed=7, batches=1)
    context = fit_context(model, "block4", loader, epochs=0)
    with pytest.raises(ValueError, match="fitted on layer 'block4', not 'block4.0'"):
        camkit.explain(model, loader[0][0], methods="causal", layers="block4.0", context=context)


@pytest.mark.parametrize("options, message", [
    (dict(calibration="median"), "calibration must be 'mean'"),
    (dict(init="random"), "init must be 'zeros' or 'default'"),
    (dict(epochs=-1), "epochs must be >= 0"),
    (dict(calibration_passes=0), "calibration_passes >= 1"),
])
def test_fit_context_bad_options_raise_before_touching_the_model(options, message):
    model, loader = make_model_and_loader()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        fit_context(model, "block4", loader, **options)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
