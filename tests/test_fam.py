"""FAM model and TAP pooling (camkit/models/fam.py): oracles, a float64 reference, bad input."""
import math

import pytest
import torch

from camkit.models.fam import FAM, ThresholdedAvgPool, build_fam

torch.set_num_threads(1)


def test_tap_hand_oracle():
    # channel 0: max 10, tau 0.1 -> keep > 1: {10, 2} -> 6; channel 1: all zero -> count 0 -> 0 / 1 = 0
    x = torch.tensor([[[[10.0, 2.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]])
    out = ThresholdedAvgPool(0.1)(x)
    assert out.shape == (1, 2, 1, 1)
    assert out.flatten().tolist() == [6.0, 0.0]


def test_tap_tau_zero_on_positive_maps_is_gap():
    x = torch.rand(2, 3, 4, 4) + 0.1
    assert torch.allclose(ThresholdedAvgPool(0.0)(x), x.mean(dim=(2, 3), keepdim=True))


@pytest.mark.parametrize("tau", [-0.1, 1.0, True, "0.1"])
def test_tap_bad_tau(tau):
    with pytest.raises(ValueError, match="tau"):
        ThresholdedAvgPool(tau)


def _reference_foreground(model, x):
    """M from the definition, one position at a time, float64."""
    X = model.features(x).double()
    B, C, h, w = X.shape
    Wq, bq = model.encoder.weight.double().reshape(-1, C), model.encoder.bias.double()
    keys, values = model.keys.double(), model.values.double()
    out = torch.empty(B, 1, h, w, dtype=torch.float64)
    for b in range(B):
        for i in range(h):
            for j in range(w):
                q = Wq @ X[b, :, i, j] + bq
                beta = torch.stack([q @ keys[n] / math.sqrt(q.numel()) for n in range(keys.shape[0])])
                s = torch.exp(beta) / torch.exp(beta).sum()
                wv = sum(s[n] * values[n] for n in range(keys.shape[0]))
                out[b, 0, i, j] = 1 / (1 + torch.exp(-(wv @ X[b, :, i, j])))
    return out


def test_foreground_matches_float64_reference():
    torch.manual_seed(0)
    model = build_fam("tiny", num_classes=3, norm="none").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = model.foreground_map(x)
        ref = _reference_foreground(model, x)
    assert got.shape == (2, 1, 4, 4)
    assert torch.allclose(got.double(), ref, atol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(memory=False), dict(parts=0), dict(attention="literal")])
def test_fam_outputs(options):
    torch.manual_seed(0)
    model = build_fam("tiny", num_classes=3, norm="none", **options).eval()
    x = torch.randn(2, 3, 16, 16)
    out = model(x, return_maps=True)
    assert out["logits"].shape == (2, 3) and out["foreground"].shape == (2, 1, 4, 4)
    assert torch.equal(model(x), out["logits"])
    single = model(x[:1], return_maps=True)
    assert torch.allclose(single["logits"], out["logits"][:1], atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(templates=0), "templates"), (dict(parts=-1), "parts"), (dict(attention="norm"), "attention"),
    (dict(lambda_spa=-1.0), "lambda_spa"), (dict(num_classes=0), "num_classes"),
])
def test_fam_bad_options(kwargs, match):
    args = dict(features=torch.nn.Identity(), channels=4, num_classes=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FAM(**args)
