"""The metric stage: uint8 maps made on the maps' device, box curves in worker processes, device-side
histogram metrics. Results never depend on where or in how many processes they were computed."""
import multiprocessing
import os

import numpy as np
import pytest
import torch
from torch import nn

from box_maps import seeded_maps
from camkit.boxes import iou_curves, iou_curves_of_uint8, scoremap_to_uint8
from camkit.evaluation import evaluate
from camkit.metric_pool import MetricPool, batch_curves, maps_to_uint8
from camkit.metrics import PeakIoU, PxAP
from test_evaluate import LAYERS, METHODS, TinyNet, ToyWSOL

pytestmark = pytest.mark.filterwarnings("ignore::camkit.heads.CAMHeadWarning")
TAUS = np.arange(0, 1, 0.01)


def _maps_with_edge_values(seed, n=40, size=16):
    """Seeded maps with exact multiples of 1/255 and their float32 neighbours (where truncation flips),
    flat, empty (all-zero) and all-one maps."""
    rng = np.random.default_rng(seed)
    maps = rng.random((n, size, size))
    k = rng.integers(0, 256, (n, size, size))
    maps[: n // 2] = k[: n // 2] / 255
    maps[1] = np.nextafter(maps[1].astype(np.float32), np.float32(0)).clip(0, 1)
    maps[2], maps[3], maps[4] = 0.0, 0.5, 1.0
    return torch.tensor(maps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_maps_to_uint8_gives_the_bytes_of_scoremap_to_uint8_after_float(dtype):
    maps = _maps_with_edge_values(0).to(dtype)
    got = maps_to_uint8(maps).numpy()
    expected = np.stack([scoremap_to_uint8(m.float().numpy()) for m in maps])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("maps, fragment", [
    (torch.full((1, 3, 3), float("nan")), "NaN"),
    (torch.full((1, 3, 3), 1.5), "[0, 1]"),
    (torch.full((1, 3, 3), -0.1), "[0, 1]"),
    (torch.zeros(3, 3), "(B, H, W)"),
    (torch.zeros(1, 0, 3), "H, W >= 1"),
])
def test_maps_to_uint8_refuses_bad_maps(maps, fragment):
    with pytest.raises(ValueError, match=None) as err:
        maps_to_uint8(maps)
    assert fragment in str(err.value)


@pytest.mark.parametrize("workers, fragment", [(-1, ">= 0"), (1.5, "whole number"), (True, "whole number"),
                                               ("2", "whole number")])
def test_metric_pool_refuses_bad_worker_counts(workers, fragment):
    with pytest.raises(ValueError) as err:
        MetricPool(workers)
    assert fragment in str(err.value) and "metric_workers" in str(err.value)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("u, fragment", [(np.zeros((3, 3)), "uint8"), (np.zeros((2, 3, 3), np.uint8), "(H, W)"),
                                         (np.zeros((0, 3), np.uint8), "non-empty")])
def test_iou_curves_of_uint8_refuses_what_is_not_a_uint8_map(u, fragment):
    with pytest.raises(ValueError) as err:
        iou_curves_of_uint8(u, [[0, 0, 1, 1]], TAUS)
    assert fragment in str(err.value)


def test_iou_curves_of_uint8_equals_iou_curves_on_seeded_maps():
    flat = [(np.zeros((5, 6)), [[0, 0, 2, 2]]), (np.full((5, 6), 0.3), [[1, 1, 5, 4]]), (np.ones((4, 4)), [[0, 0, 3, 3]])]
    for m, gt in list(seeded_maps(7, 120)) + flat:
        for got, expected in zip(iou_curves_of_uint8(scoremap_to_uint8(m), gt, TAUS), iou_curves(m, gt, TAUS)):
            np.testing.assert_array_equal(got, expected)


def _batches(seed, n_batches=4, batch=8, size=20):
    rng = np.random.default_rng(seed)
    maps = [m for m, _ in seeded_maps(seed, 400) if min(m.shape) >= 3]
    out = []
    for b in range(n_batches):
        chosen = [maps[(b * batch + i) % len(maps)] for i in range(batch)]
        u8 = np.zeros((batch, size, size), np.uint8)   # padded to one shape; zeros add empty corners
        boxes = []
        for i, m in enumerate(chosen):
            u8[i, : m.shape[0], : m.shape[1]] = scoremap_to_uint8(m)
            x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
            boxes.append(np.array([[x0, y0, x0 + int(rng.integers(1, size // 2)), y0 + 5]], np.int64))
        out.append((u8, boxes))
    return out


def test_pool_of_two_workers_equals_serial_and_leaves_no_child_after_a_worker_error():
    batches = _batches(11)
    before_pool = _shared_blocks()
    serial = [batch_curves(u8, boxes, TAUS) for u8, boxes in batches]
    with pytest.raises(ValueError, match="invalid boxes"):
        with MetricPool(2) as pool:
            futures = [pool.submit(u8, boxes, TAUS) for u8, boxes in batches]
            for future, expected in zip(futures, serial):       # merged in submission order
                for got, want in zip(future.result(), expected):
                    np.testing.assert_array_equal(got, want)
            bad_boxes = [np.array([[5, 0, 2, 3]], np.int64)] * len(batches[0][1])   # x1 < x0: the worker raises
            pool.submit(batches[0][0], bad_boxes, TAUS).result()
    assert multiprocessing.active_children() == []
    assert not _shared_blocks() - before_pool


def _shared_blocks():
    """The names of the shared-memory segments of this machine (POSIX: files of /dev/shm)."""
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory is listed in /dev/shm")
def test_maps_travel_in_reused_shared_blocks_that_are_unlinked_at_the_end():
    rng = np.random.default_rng(3)
    sizes = [4, 4, 2, 9, 1]          # a batch bigger than any before it gets a new block
    batches = [(rng.integers(0, 256, (b, 20, 24), dtype=np.uint8), [np.array([[2, 3, 15, 12]], np.int64)] * b)
               for b in sizes]
    before = _shared_blocks()
    with MetricPool(2) as pool:
        for u8, boxes in batches:                       # one at a time: each block is free again after
            got = pool.submit(u8, boxes, TAUS).result()
            for have, want in zip(got, batch_curves(u8, boxes, TAUS)):
                np.testing.assert_array_equal(have, want)
        names = pool._blocks.names()
        assert len(names) == 2                          # 4 x 20 x 24 bytes, reused for 4 and 2, then 9 x ...
        assert set(n.lstrip("/") for n in names) <= _shared_blocks()
    assert not _shared_blocks() - before                # every block unlinked
    with pytest.raises(RuntimeError, match="caller failure"):
        with MetricPool(1) as pool:
            pool.submit(*batches[0], TAUS)
            raise RuntimeError("caller failure")
    assert not _shared_blocks() - before and multiprocessing.active_children() == []


def _evaluate(workers, model=None):
    return evaluate(model or TinyNet(), ToyWSOL(n=6), methods=METHODS, layers=LAYERS, batch_size=2,
                    cam_curve_interval=0.01, progress=False, metric_workers=workers)


def _assert_same_tables(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].keys() == b[key].keys()
        for column in a[key]:
            np.testing.assert_array_equal(np.asarray(a[key][column]), np.asarray(b[key][column]))


class FailsOnSecondBatch(TinyNet):
    """Raises in the engine after its first forward pass of 2 images, the metric pool running."""

    def __init__(self):
        super().__init__()
        self.images_seen = 0

    def forward(self, x):
        if self.images_seen >= 2:
            raise RuntimeError("engine failure")
        self.images_seen += len(x)
        return super().forward(x)


def test_evaluate_is_identical_for_0_1_2_metric_workers_and_cleans_up_after_an_engine_error():
    serial = _evaluate(0)
    for workers in (1, 2):
        _assert_same_tables(_evaluate(workers), serial)
    assert multiprocessing.active_children() == []
    with pytest.raises(RuntimeError, match="engine failure"):
        _evaluate(2, FailsOnSecondBatch())
    assert multiprocessing.active_children() == []


def _pxap_histograms_numpy(maps, masks, interval):
    edges = np.concatenate([np.arange(0, 1, interval), [1.0, 2.0, 3.0]])
    v, m = maps.reshape(-1), masks.reshape(-1)
    return np.histogram(v[m == 1], edges)[0], np.histogram(v[m == 0], edges)[0]


def _peak_curves_numpy(maps, masks):
    inter, union = [], []
    for s, g in zip(maps, masks):
        u = (s.astype(np.float32) * np.float32(255)).astype(np.uint8)
        valid, pos = g != 255, g == 1
        pred = u[None] >= np.arange(256)[:, None, None]
        inter.append((pred & pos).sum((1, 2)))
        union.append(((pred & valid) | pos).sum((1, 2)))
    return np.stack(inter), np.stack(union)


def test_device_side_pxap_and_peak_iou_equal_the_numpy_host_computation():
    maps = _maps_with_edge_values(5, n=12, size=12).float()
    masks = torch.tensor(np.random.default_rng(6).choice([0, 1, 255], (12, 12, 12), p=[0.5, 0.4, 0.1]),
                         dtype=torch.uint8)
    pxap = PxAP(0.01).update(maps, masks)
    pos, neg = _pxap_histograms_numpy(maps.double().numpy(), masks.numpy(), 0.01)
    np.testing.assert_array_equal(pxap.hist_pos.numpy(), pos)
    np.testing.assert_array_equal(pxap.hist_neg.numpy(), neg)
    inter, union = PeakIoU.curves(maps, masks)
    want_inter, want_union = _peak_curves_numpy(maps.numpy(), masks.numpy())
    np.testing.assert_array_equal(inter.numpy(), want_inter)
    np.testing.assert_array_equal(union.numpy(), want_union)


@pytest.mark.parametrize("workers, fragment", [(-2, ">= 0"), (0.5, "whole number")])
def test_evaluate_refuses_a_bad_metric_worker_count_before_any_batch(workers, fragment):
    model = TinyNet()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(ValueError) as err:
        _evaluate(workers, model)
    assert fragment in str(err.value) and "metric_workers" in str(err.value)
    assert calls == [] and multiprocessing.active_children() == []
