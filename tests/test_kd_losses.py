import math

import pytest
import torch

from camkit.train.kd_losses import (activation_distillation_loss, area_loss, difference_loss,
                                    foreground_loss, logit_distillation_loss, released_logit_distillation_loss)


def test_foreground_loss_hand():
    # CE([0, ln3], y=1) = -log(3/4)
    s = torch.tensor([[0.0, math.log(3.0)]])
    assert foreground_loss(s, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))


def test_difference_loss_hand():
    fg = torch.tensor([[1.0, 1.0 + math.log(3.0)]])
    bg = torch.tensor([[1.0, 1.0]])
    assert difference_loss(fg, bg, torch.tensor([0])).item() == pytest.approx(-math.log(0.25))


def test_area_loss_hand():
    m = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])  # minus min: 0,1,2,5 -> mean 2
    assert area_loss(m).item() == pytest.approx(2.0)


def test_logit_distillation_hand_and_torch():
    # teacher uniform over 2, student logits [0, ln3] at T=1: KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
    s = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    t = torch.zeros(1, 2, dtype=torch.float64)
    want = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    assert logit_distillation_loss(s, t, 1.0).item() == pytest.approx(want)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    ref = torch.nn.functional.kl_div((s / 3).log_softmax(1), (t / 3).log_softmax(1), log_target=True,
                                     reduction="batchmean") * 9
    assert logit_distillation_loss(s, t, 3.0).item() == pytest.approx(ref.item())


def test_activation_distillation_hand():
    s = torch.zeros(1, 1, 2)
    t = torch.tensor([[[0.0, math.log(3.0)]]])
    # softmax: s -> [.5,.5], t -> [.25,.75]; mse = (.0625+.0625)/2
    assert activation_distillation_loss(s, t, 1.0).item() == pytest.approx(0.0625)
    sg = 1 / (1 + 1 / 3)  # sigmoid(ln3) = .75
    assert activation_distillation_loss(s, t, 1.0, "sigmoid").item() == pytest.approx(((0.5 - sg) ** 2) / 2)


@pytest.mark.parametrize("call", [
    lambda: logit_distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), 0.0),
    lambda: activation_distillation_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), -1.0),
    lambda: activation_distillation_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), 1.0, "exp"),
    lambda: released_logit_distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), -2.0),
    lambda: activation_distillation_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 4), 1.0),
    lambda: activation_distillation_loss(torch.zeros(2, 2), torch.zeros(2, 2), 1.0),
    lambda: area_loss(torch.zeros(2, 2)),
    lambda: difference_loss(torch.zeros(1, 2), torch.zeros(1, 3), torch.tensor([0])),
])
def test_bad_input(call):
    with pytest.raises(ValueError):
        call()


def _ref_ld(s, t, T):
    total = 0.0
    for i in range(s.shape[0]):
        zs = [math.exp(v / T) for v in s[i].tolist()]
        zt = [math.exp(v / T) for v in t[i].tolist()]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        total += T * T * sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return total / s.shape[0]


def _ref_ad_softmax(s, t, T):
    total = 0.0
    for i in range(s.shape[0]):
        a, b = s[i].flatten().tolist(), t[i].flatten().tolist()
        ea, eb = [math.exp(v / T) for v in a], [math.exp(v / T) for v in b]
        total += sum((x / sum(ea) - y / sum(eb)) ** 2 for x, y in zip(ea, eb)) / len(a)
    return total / s.shape[0]


def test_float64_references_and_batch_split():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 7, generator=g, dtype=torch.float64), torch.randn(6, 7, generator=g, dtype=torch.float64)
    assert logit_distillation_loss(s, t, 15.0).item() == pytest.approx(_ref_ld(s, t, 15.0), rel=1e-10)
    ms, mt = torch.randn(6, 3, 4, generator=g, dtype=torch.float64), torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    assert activation_distillation_loss(ms, mt, 2.0).item() == pytest.approx(_ref_ad_softmax(ms, mt, 2.0), rel=1e-10)

    class State:
        normalizer = 3.0  # global batch 6 over 2 processes
    halves = [logit_distillation_loss(s[:4], t[:4], 15.0, State()), logit_distillation_loss(s[4:], t[4:], 15.0, State())]
    assert (sum(halves) / 2).item() == pytest.approx(logit_distillation_loss(s, t, 15.0).item(), rel=1e-10)


def test_released_logit_term_hand_and_kldivloss_on_probabilities():
    # teacher uniform, student [0, ln3], T=1: q = [.5, .5], p = [.25, .75]:
    # sum_k q_k (log q_k - p_k) = ln(.5) - (.25 + .75) / 2
    s = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    t = torch.zeros(1, 2, dtype=torch.float64)
    assert released_logit_distillation_loss(s, t, 1.0).item() == pytest.approx(math.log(0.5) - 0.5)
    # not a divergence: at p = q it is -H(q) - sum q^2, not 0
    assert released_logit_distillation_loss(t, t, 1.0).item() == pytest.approx(math.log(0.5) - 0.5)
    # what the released code computes: KLDivLoss(batchmean)(softmax(s/T), softmax(t/T)), no T^2
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 6, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g, dtype=torch.float64)
    released = torch.nn.KLDivLoss(reduction="batchmean")((s / 15).softmax(1), (t / 15).softmax(1))
    assert released_logit_distillation_loss(s, t, 15.0).item() == pytest.approx(released.item(), rel=1e-10)


def _ref_ad_per_class(s, t, T, normalize):
    """(B, N, H, W): each class map normalised over its own positions, MSE over N*H*W, batch mean."""
    total = 0.0
    b, n = s.shape[:2]
    for i in range(b):
        sq = []
        for k in range(n):
            a, c = s[i, k].flatten().tolist(), t[i, k].flatten().tolist()
            if normalize == "softmax":
                ea, ec = [math.exp(v / T) for v in a], [math.exp(v / T) for v in c]
                a, c = [v / sum(ea) for v in ea], [v / sum(ec) for v in ec]
            else:
                a, c = [1 / (1 + math.exp(-v / T)) for v in a], [1 / (1 + math.exp(-v / T)) for v in c]
            sq += [(x - y) ** 2 for x, y in zip(a, c)]
        total += sum(sq) / len(sq)
    return total / b


@pytest.mark.parametrize("normalize", ["softmax", "sigmoid"])
def test_activation_distillation_per_class_maps_float64_reference(normalize):
    g = torch.Generator().manual_seed(2)
    s = torch.randn(3, 4, 2, 3, generator=g, dtype=torch.float64) * 5
    t = torch.randn(3, 4, 2, 3, generator=g, dtype=torch.float64) * 5
    got = activation_distillation_loss(s, t, 1.5, normalize).item()
    assert got == pytest.approx(_ref_ad_per_class(s, t, 1.5, normalize), rel=1e-10)
    # per class: adding a constant to one class's student map leaves the softmax form unchanged
    shifted = s.clone()
    shifted[:, 2] += 7.0
    if normalize == "softmax":
        assert activation_distillation_loss(shifted, t, 1.5, normalize).item() == pytest.approx(got, rel=1e-10)
