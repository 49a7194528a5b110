"""Faithfulness oracles: closed forms on a linear-score model, hand-made scores, a direct linear solve.

The model of the deletion / insertion / ROAD oracles is ``flatten -> nn.Linear`` with ``score="logit"``,
so the score of any image is ``S(x) = sum_p a_p x_p + b``, computed here with numpy.
"""
import numpy as np
import pytest
import torch
from torch import nn

from camkit.faithfulness import ROAD, AverageDrop, DeletionInsertion, FaithfulnessEvaluator, noisy_linear_impute
from untouched import assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

C, H, W, K = 2, 4, 4, 3


def linear_model():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, K))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(K, C * H * W, generator=g))
        model[1].bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    return model.double()


def linear_score(model, image, target):
    """``S(x)`` of one ``(C, H, W)`` numpy image by numpy."""
    a = model[1].weight.detach().numpy()[target]
    return float(a @ image.reshape(-1) + model[1].bias.detach().numpy()[target])


def batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, C, H, W, generator=g, dtype=torch.float64)
    maps = torch.rand(2, H, W, generator=g, dtype=torch.float64)       # distinct values: no ties
    return images, maps, torch.tensor([0, 2])


def trapezoid(scores):
    return (sum(scores) - (scores[0] + scores[-1]) / 2) / (len(scores) - 1)


def expected_auc(model, image, saliency, target, steps, deleting):
    order = np.argsort(-saliency.reshape(-1), kind="stable")
    scores = []
    for i in range(steps + 1):
        chosen = order[: (i * H * W) // steps]
        x = image.copy().reshape(C, -1) if deleting else np.zeros((C, H * W))
        x[:, chosen] = 0.0 if deleting else image.reshape(C, -1)[:, chosen]
        scores.append(linear_score(model, x, target))
    return trapezoid(scores)


@pytest.mark.parametrize("steps", [1, 3, 4, 16])
def test_deletion_and_insertion_auc_equal_the_closed_form(steps):
    model = linear_model()
    images, maps, targets = batch()
    metric = DeletionInsertion(steps=steps, deletion_baseline="zeros", insertion_baseline="zeros", score="logit",
                               batch_size=5)
    before = snapshot(model)
    metric.update(model, images, maps, targets)
    assert_unchanged(model, before)
    deletion = np.mean([expected_auc(model, images[i].numpy(), maps[i].numpy(), int(targets[i]), steps, True)
                        for i in range(2)])
    insertion = np.mean([expected_auc(model, images[i].numpy(), maps[i].numpy(), int(targets[i]), steps, False)
                         for i in range(2)])
    out = metric.compute()
    assert out["Deletion"] == pytest.approx(deletion, abs=1e-9)
    assert out["Insertion"] == pytest.approx(insertion, abs=1e-9)


def test_deletion_insertion_merge_equals_one_stream():
    model = linear_model()
    images, maps, targets = batch()
    whole = DeletionInsertion(steps=4, score="logit", insertion_baseline="zeros")
    whole.update(model, images, maps, targets)
    first, second = (DeletionInsertion(steps=4, score="logit", insertion_baseline="zeros") for _ in range(2))
    first.update(model, images[:1], maps[:1], targets[:1])
    second.update(model, images[1:], maps[1:], targets[1:])
    assert first.merge(second).compute() == pytest.approx(whole.compute(), abs=1e-12)
    assert int(first.count) == 2


def test_average_drop_and_increase_on_hand_made_scores():
    metric = AverageDrop()
    metric.update_from_scores(torch.tensor([0.5, 0.8]), torch.tensor([0.25, 0.9]))   # drops 0.5, 0; one increase
    other = AverageDrop()
    other.update_from_scores(torch.tensor([0.2, 0.4]), torch.tensor([0.2, 0.1]))     # drops 0, 0.75; none
    out = metric.merge(other).compute()
    assert out["Average Drop"] == pytest.approx(100 * (0.5 + 0 + 0 + 0.75) / 4)
    assert out["Increase in Confidence"] == pytest.approx(100 * 1 / 4)


def test_average_drop_scores_the_map_masked_image():
    model = linear_model()
    images, maps, targets = batch()
    metric = AverageDrop(score="softmax")
    metric.update(model, images, maps, targets)
    drops, increases = [], 0
    for i in range(2):
        logits = [linear_score(model, images[i].numpy(), k) for k in range(K)]
        masked = [linear_score(model, (images[i] * maps[i]).numpy(), k) for k in range(K)]
        y = np.exp(logits[targets[i]]) / np.exp(logits).sum()
        o = np.exp(masked[targets[i]]) / np.exp(masked).sum()
        drops.append(max(0.0, y - o) / y)
        increases += int(o > y)
    out = metric.compute()
    assert out["Average Drop"] == pytest.approx(100 * np.mean(drops), abs=1e-9)
    assert out["Increase in Confidence"] == pytest.approx(100 * increases / 2)


NEIGHBOURS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6, (0, 1): 1 / 6,
              (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}


def lstsq_impute(image, removed):
    """ROAD's system solved densely: each removed pixel is the weighted mean of its in-image neighbours."""
    c, h, w = image.shape
    unknown = [(y, x) for y in range(h) for x in range(w) if removed[y, x]]
    index = {p: i for i, p in enumerate(unknown)}
    out = image.copy()
    for channel in range(c):
        a = np.zeros((len(unknown), len(unknown)))
        b = np.zeros(len(unknown))
        for i, (y, x) in enumerate(unknown):
            for (dy, dx), weight in NEIGHBOURS.items():
                ny, nx = y + dy, x + dx
                if not (0 <= ny < h and 0 <= nx < w):
                    continue
                a[i, i] += weight
                if (ny, nx) in index:
                    a[i, index[(ny, nx)]] -= weight
                else:
                    b[i] += weight * image[channel, ny, nx]
        solution = np.linalg.lstsq(a, b, rcond=None)[0]
        for i, (y, x) in enumerate(unknown):
            out[channel, y, x] = solution[i]
    return out


def test_noisy_linear_imputation_equals_a_direct_linear_solve():
    g = torch.Generator().manual_seed(2)
    image = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64)
    removed = torch.zeros(1, 4, 5, dtype=torch.bool)
    removed[0, 0, 0] = removed[0, 1, 1] = removed[0, 1, 2] = removed[0, 2, 2] = removed[0, 3, 4] = True
    removed[0, 2, 0] = True
    imputed = noisy_linear_impute(image, removed, noise=0.0, tol=1e-13)
    expected = lstsq_impute(image[0].numpy(), removed[0].numpy())
    np.testing.assert_allclose(imputed[0].numpy(), expected, atol=1e-9)
    assert torch.equal(imputed[0][:, ~removed[0]], image[0][:, ~removed[0]])   # kept pixels untouched


def test_imputation_noise_is_seeded_and_only_on_removed_pixels():
    image = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    removed = torch.zeros(1, 5, 5, dtype=torch.bool)
    removed[0, 1:4, 1:4] = True
    first = noisy_linear_impute(image, removed, noise=0.5, generator=torch.Generator().manual_seed(3))
    second = noisy_linear_impute(image, removed, noise=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert bool((first[0, 0][removed[0]] != 0).all()) and bool((first[0, 0][~removed[0]] == 0).all())


def test_road_scores_the_imputed_images():
    model = linear_model()
    images, maps, targets = batch()
    metric = ROAD(percentiles=(25, 50), noise=0.0, score="logit")
    metric.update(model, images, maps, targets)
    out = metric.compute()
    for p in (25, 50):
        k = round(p / 100 * H * W)
        for name, most_relevant_first in (("MoRF", True), ("LeRF", False)):
            scores = []
            for i in range(2):
                order = np.argsort(-maps[i].numpy().reshape(-1), kind="stable")
                chosen = order[:k] if most_relevant_first else order[H * W - k:]
                removed = np.zeros(H * W, bool)
                removed[chosen] = True
                filled = lstsq_impute(images[i].numpy(), removed.reshape(H, W))
                scores.append(linear_score(model, filled, int(targets[i])))
            assert out[f"ROAD-{name}@{p}"] == pytest.approx(np.mean(scores), abs=1e-6)
    assert out["ROAD"] == pytest.approx(np.mean([(out[f"ROAD-LeRF@{p}"] - out[f"ROAD-MoRF@{p}"]) / 2
                                                 for p in (25, 50)]))


@pytest.mark.parametrize("make, error, fragment", [
    (lambda: DeletionInsertion(steps=0), ValueError, "steps must be a whole number >= 1"),
    (lambda: DeletionInsertion(steps=2.5), ValueError, "steps must be a whole number >= 1"),
    (lambda: DeletionInsertion(deletion_baseline="noise"), ValueError, "unknown deletion_baseline 'noise'"),
    (lambda: DeletionInsertion(insertion_baseline="mean"), ValueError, "unknown insertion_baseline"),
    (lambda: DeletionInsertion(score="prob"), ValueError, "unknown score 'prob'"),
    (lambda: DeletionInsertion(batch_size=0), ValueError, "batch_size must be a whole number >= 1"),
    (lambda: ROAD(percentiles=(0, 50)), ValueError, "percentiles must be distinct numbers in (0, 100)"),
    (lambda: ROAD(percentiles=(100,)), ValueError, "percentiles must be distinct numbers in (0, 100)"),
    (lambda: ROAD(percentiles=()), ValueError, "percentiles must be distinct numbers in (0, 100)"),
    (lambda: ROAD(percentiles=(50, 50)), ValueError, "percentiles must be distinct numbers in (0, 100)"),
    (lambda: ROAD(percentiles="50"), ValueError, "percentiles must be distinct numbers in (0, 100)"),
    (lambda: ROAD(noise=-1), ValueError, "noise must be a finite number >= 0"),
    (lambda: AverageDrop(score="logits"), ValueError, "unknown score 'logits'"),
    (lambda: FaithfulnessEvaluator(linear_model(), steps=0), ValueError, "steps must be a whole number >= 1"),
    (lambda: FaithfulnessEvaluator(linear_model(), percentiles=(120,)), ValueError, "percentiles must be"),
    (lambda: AverageDrop().compute(), ValueError, "nothing was updated"),
    (lambda: AverageDrop().update_from_scores(torch.tensor([0.0]), torch.tensor([0.1])), ValueError,
     "every original score must be > 0"),
    (lambda: AverageDrop().update_from_scores(torch.tensor([0.5]), torch.tensor([0.1, 0.2])), ValueError,
     "two (N,) tensors of one length"),
    (lambda: DeletionInsertion().update(linear_model(), *batch()), ValueError, "needs images of at least 6x6"),
    (lambda: noisy_linear_impute(torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool)), ValueError,
     "every pixel removed"),
])
def test_bad_options_are_refused(make, error, fragment):
    with pytest.raises(error, match=None) as info:
        make()
    assert fragment in str(info.value)


@pytest.mark.parametrize("metric", [DeletionInsertion(steps=2), ROAD(percentiles=(50,)), AverageDrop()])
@pytest.mark.parametrize("maps, targets, fragment", [
    (torch.rand(2, 3, 3), torch.tensor([0, 1]), "maps must be (B, H, W) = (2, 4, 4)"),
    (torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), "maps must be (B, H, W) = (2, 4, 4)"),
    (torch.rand(2, 4, 4), torch.tensor([0]), "targets must be (B,) = (2,)"),
])
def test_bad_updates_are_refused_and_change_nothing(metric, maps, targets, fragment):
    model = linear_model()
    before = snapshot(model)
    with pytest.raises(ValueError) as info:
        metric.update(model, torch.randn(2, C, H, W, dtype=torch.float64), maps, targets)
    assert fragment in str(info.value)
    assert int(metric.count) == 0 and bool((metric.sums == 0).all())
    assert_unchanged(model, before)
