"""FAM's losses (camkit.train.fam_losses): hand-computed oracles, float64 references from the
definitions, invariances, the loop's normalisation and bad input."""
import itertools
import math

import pytest
import torch

from camkit.train.fam_losses import (
    balanced_class_weights, class_balanced_cross_entropy, diversity_loss, fam_loss, sparsity_loss,
)
from camkit.train.recipes import CAM_CONFIG, StepState

torch.set_num_threads(1)


def test_sparsity_hand_oracle():
    # image 0: (0.5 + 0.5 + 0 + 1) / 4 = 0.5 ; image 1: (0.25 * 4) / 4 = 0.25 -> mean 0.375
    m = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]], [[[0.25, 0.25], [0.25, 0.25]]]])
    assert sparsity_loss(m).item() == pytest.approx(0.375)
    assert sparsity_loss(-m).item() == pytest.approx(0.375)          # |M|


def test_sparsity_float64_reference_and_normalizer():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(3, 1, 4, 5, generator=g, dtype=torch.float64)
    ref = sum(abs(float(m[b, 0, i, j])) for b in range(3) for i in range(4) for j in range(5)) / 60
    assert sparsity_loss(m).item() == pytest.approx(ref, abs=1e-12)
    state = StepState(0, 0, 0, None, CAM_CONFIG, normalizer=6.0)     # global batch 6 split over 2 processes
    assert sparsity_loss(m, state).item() == pytest.approx(ref * 3 / 6, abs=1e-12)


def test_diversity_hand_oracle_counts_pairs_k_below_l_once():
    # p1 = (1, 0), p2 = (0, 1), p3 = (1, 1): cos12 = 0, cos13 = cos23 = 1/sqrt2 -> mean sqrt2 / 3
    p = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    assert diversity_loss(p).item() == pytest.approx(math.sqrt(2) / 3, abs=1e-6)
    same = torch.tensor([[[2.0, 1.0], [4.0, 2.0]]])                  # parallel: cosine 1 (not 1 + diagonal)
    assert diversity_loss(same).item() == pytest.approx(1.0, abs=1e-6)


def _cos64(a, b):
    a, b = a.double(), b.double()
    return float((a * b).sum() / (a.pow(2).sum().sqrt() * b.pow(2).sum().sqrt()))


def test_diversity_float64_reference_and_invariances():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    ref = sum(sum(_cos64(p[b, k], p[b, l]) for k, l in itertools.combinations(range(5), 2)) / 10
              for b in range(2)) / 2
    assert diversity_loss(p).item() == pytest.approx(ref, abs=1e-12)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert diversity_loss(p[:, perm]).item() == pytest.approx(ref, abs=1e-12)          # part order
    scale = torch.tensor([0.5, 2.0, 3.0, 7.0, 0.1], dtype=torch.float64)[None, :, None]
    assert diversity_loss(p * scale).item() == pytest.approx(ref, abs=1e-12)           # per-part scale


@pytest.mark.parametrize("parts", [0, 1])
def test_diversity_is_zero_without_pairs_and_stays_connected(parts):
    p = torch.randn(2, parts, 4, requires_grad=True)
    loss = diversity_loss(p)
    assert loss.item() == 0.0
    loss.backward()                                                   # connected to the graph (DDP)


def test_diversity_zero_vector_has_cosine_zero():
    p = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    assert diversity_loss(p).item() == 0.0


def test_balanced_weights_hand_oracle():
    # N = 6, K = 3, counts (3, 2, 1): w = 6 / (3 n_c) = (2/3, 1, 2)
    w = balanced_class_weights([0, 0, 0, 1, 1, 2], 3)
    assert torch.allclose(w, torch.tensor([2 / 3, 1.0, 2.0], dtype=torch.float64))
    assert torch.equal(balanced_class_weights([0, 1, 2, 0, 1, 2], 3), torch.ones(3, dtype=torch.float64))


def _ce64(logits, label):
    z = [float(v) for v in logits]
    return math.log(sum(math.exp(v) for v in z)) - z[label]


def test_class_balanced_ce_hand_oracle_and_reference():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 1])
    # CE_0 = log 2, CE_1 = log 4; weights (1, 3): (log 2 + 3 log 4) / 2
    weights = torch.tensor([1.0, 3.0])
    expected = (math.log(2) + 3 * math.log(4)) / 2
    assert class_balanced_cross_entropy(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)
    assert class_balanced_cross_entropy(logits, labels).item() == pytest.approx((math.log(2) + math.log(4)) / 2,
                                                                                rel=1e-6)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 2, 2, 1, 0])
    w = torch.tensor([0.5, 1.5, 2.0, 0.25], dtype=torch.float64)
    ref = sum(float(w[y[i]]) * _ce64(z[i], int(y[i])) for i in range(6)) / 6
    assert class_balanced_cross_entropy(z, y, w).item() == pytest.approx(ref, abs=1e-12)


def test_fam_loss_combines_the_terms_with_the_model_weights():
    from camkit.models import build_fam
    torch.manual_seed(0)
    model = build_fam("tiny", num_classes=3, widths=(4, 8, 8, 8), lambda_spa=0.5, lambda_div=0.25,
                      class_weights=[1.0, 2.0, 3.0]).train()
    batch = {"image": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 1, 2, 1])}
    out = model(batch["image"], return_maps=True)
    terms = fam_loss(out, batch, StepState(0, 0, 0, model, CAM_CONFIG))
    z, m, p = (out[k].detach().double() for k in ("logits", "foreground", "part_features"))
    cls = sum((1.0, 2.0, 3.0)[y] * _ce64(z[i], y) for i, y in enumerate([0, 1, 2, 1])) / 4
    spa = float(m.abs().mean())
    div = sum(sum(_cos64(p[b, k], p[b, l]) for k, l in itertools.combinations(range(5), 2)) / 10
              for b in range(4)) / 4
    assert terms["cls"].item() == pytest.approx(cls, rel=1e-5)
    assert terms["spa"].item() == pytest.approx(spa, rel=1e-5)
    assert terms["div"].item() == pytest.approx(div, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(cls + 0.5 * spa + 0.25 * div, rel=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda: sparsity_loss(torch.zeros(2, 4)), "foreground map"),
    (lambda: diversity_loss(torch.zeros(2, 4)), "part features"),
    (lambda: balanced_class_weights([0, 0, 2], 3), "no training image"),
    (lambda: balanced_class_weights([0, 3], 3), "labels must lie"),
    (lambda: balanced_class_weights([], 3), "at least one"),
    (lambda: class_balanced_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), torch.ones(2)), "one weight"),
    (lambda: fam_loss({}, {}, None), "state.model"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
