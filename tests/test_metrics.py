"""camkit.metrics: hand oracles, the slow reference, exact merge and exact gloo all_reduce."""
import os
import socket
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import ndimage as ndi

import wsol_reference as ref
from camkit.metrics import LocalizationAccuracy, MaxBoxAcc, PeakIoU, PxAP


def _square_map(h, w, box):
    m = np.zeros((h, w))
    x0, y0, x1, y1 = box
    m[y0:y1 + 1, x0:x1 + 1] = 1.0
    return m


def _random_maps(seed, n, h=12, w=15):
    rng = np.random.default_rng(seed)
    maps, gts, masks = [], [], []
    for k in range(n):
        m = ndi.zoom(rng.random((3, 3)), (h / 3, w / 3), order=1) if k % 2 else rng.random((h, w))
        m = (m - m.min()) / (m.max() - m.min())
        maps.append(m)
        gts.append(np.array([[int(rng.integers(0, 6)), int(rng.integers(0, 5)),
                              int(rng.integers(7, w)), int(rng.integers(6, h))]]))
        mk = (rng.random((h, w)) < m).astype(np.uint8)
        mk[rng.random((h, w)) < 0.1] = 255
        masks.append(mk)
    return np.stack(maps), gts, np.stack(masks)


# ------------------------------------------------------------------------------------ MaxBoxAcc
def test_maxboxacc_hand_oracle():
    # image 1: the map is exactly the GT square: contour box (2,2,min(5+1,9),min(5+1,9)) = (2,2,6,6)
    # image 2: an all-zero map -> box [0,0,0,0], IoU 0 with a GT far away
    maps = np.stack([_square_map(10, 10, (2, 2, 5, 5)), np.zeros((10, 10))])
    gts = [np.array([[2, 2, 6, 6]]), np.array([[5, 5, 9, 9]])]
    out = MaxBoxAcc().update(maps, gts).compute()
    assert out["MaxBoxAcc@30"] == out["MaxBoxAcc@50"] == out["MaxBoxAcc@70"] == 50.0
    assert out["MaxBoxAccV2"] == 50.0 and out["best_threshold@50"] == 0.0
    # with the tight GT (2,2,5,5) the IoU is 16/25 = 0.64: correct at 30 and 50, not at 70
    out = MaxBoxAcc().update(maps, [np.array([[2, 2, 5, 5]]), gts[1]]).compute()
    assert (out["MaxBoxAcc@30"], out["MaxBoxAcc@50"], out["MaxBoxAcc@70"]) == (50.0, 50.0, 0.0)
    assert out["MaxBoxAccV2"] == pytest.approx(100 / 3)


@pytest.mark.parametrize("multi_contour", [False, True])
def test_maxboxacc_equals_reference(multi_contour):
    maps, gts, _ = _random_maps(0, 8)
    metric = MaxBoxAcc(cam_curve_interval=0.01, multi_contour=multi_contour)
    out = metric.update(torch.tensor(maps), gts).compute()
    expected = ref.max_box_acc(maps, gts, np.arange(0, 1, 0.01), multi_contour)
    for d in (30, 50, 70):
        assert out[f"MaxBoxAcc@{d}"] == expected[d]


def test_maxboxacc_merge_equals_single():
    maps, gts, _ = _random_maps(1, 9)
    single = MaxBoxAcc().update(maps, gts)
    a = MaxBoxAcc().update(maps[:4], gts[:4])
    b = MaxBoxAcc().update(maps[4:], gts[4:])
    merged = a.merge(b)
    assert torch.equal(merged.counts, single.counts) and int(merged.num_images) == 9
    assert merged.compute()["MaxBoxAccV2"] == single.compute()["MaxBoxAccV2"]
    with pytest.raises(ValueError, match="configurations differ"):
        MaxBoxAcc(multi_contour=False).merge(MaxBoxAcc())


def test_maxboxacc_errors():
    with pytest.raises(RuntimeError, match="before any update"):
        MaxBoxAcc().compute()
    with pytest.raises(ValueError, match="ground-truth box sets"):
        MaxBoxAcc().update(np.zeros((2, 5, 5)), [np.zeros((1, 4))])


# ------------------------------------------------------------------------ localisation accuracy
def test_localization_accuracy_oracle():
    maps = np.stack([_square_map(10, 10, (2, 2, 5, 5))] * 3)
    gts = [np.array([[2, 2, 6, 6]])] * 2 + [np.array([[0, 0, 0, 0]])]
    logits = torch.tensor([[5., 1, 0, 0, 0, 0, 0],      # label 0 top-1
                           [0., 1, 2, 3, 4, 5, 6],      # label 0 ranked 7th: not even top-5
                           [0., 1, 2, 3, 4, 5, 6]])     # label 6 top-1, but the box misses
    labels = torch.tensor([0, 0, 6])
    out = LocalizationAccuracy(fixed_threshold=0.2).update(maps, gts, logits, labels).compute()
    assert out["GT-known"] == pytest.approx(200 / 3)
    assert out["Top-1 Loc"] == pytest.approx(100 / 3) and out["Top-5 Loc"] == pytest.approx(100 / 3)
    assert out["Top-1 Cls"] == pytest.approx(200 / 3) and out["Top-5 Cls"] == pytest.approx(200 / 3)
    assert out["GT-known@fixed"] == pytest.approx(200 / 3) and out["fixed_threshold"] == pytest.approx(0.2)
    logits[1, 0] = 2.5   # label 0 now 5th -> top-5 but not top-1
    out = LocalizationAccuracy().update(maps, gts, logits, labels).compute()
    assert out["Top-5 Loc"] == pytest.approx(200 / 3) and out["Top-1 Loc"] == pytest.approx(100 / 3)


# ------------------------------------------------------------------------------------------ PxAP
def test_pxap_constant_and_perfect():
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 8, 9)) < 0.3).astype(np.uint8)
    frac = masks.mean()
    out = PxAP().update(torch.full((3, 8, 9), 0.5), masks).compute()
    assert out["PxAP"] == pytest.approx(100 * frac, rel=1e-12)
    perfect = PxAP().update(torch.tensor(masks, dtype=torch.float32), masks).compute()
    assert perfect["PxAP"] == 100.0 and perfect["pIoU"] == 100.0


def test_pxap_equals_reference_exactly_and_ignores_255():
    maps, _, masks = _random_maps(2, 6)
    out = PxAP().update(torch.tensor(maps, dtype=torch.float32), masks).compute()
    expected_ap, expected_iou = ref.pxap(maps.astype(np.float32), masks)
    assert out["PxAP"] == expected_ap
    assert out["pIoU"] == expected_iou
    # ignored pixels change nothing whatever their score
    maps2 = maps.copy()
    maps2[masks == 255] = 1 - maps2[masks == 255]
    assert PxAP().update(torch.tensor(maps2, dtype=torch.float32), masks).compute()["PxAP"] == out["PxAP"]


def test_pxap_merge_equals_single():
    maps, _, masks = _random_maps(3, 6)
    single = PxAP().update(maps, masks)
    merged = PxAP().update(maps[:2], masks[:2]).merge(PxAP().update(maps[2:], masks[2:]))
    assert torch.equal(single.hist_pos, merged.hist_pos) and merged.compute() == single.compute()


# --------------------------------------------------------------------------------------- PeakIoU
def _peak_iou_loop(m, mask):
    u = (np.asarray(m, np.float32) * 255).astype(np.uint8)
    valid = mask != 255
    gt = (mask == 1) & valid
    curve = []
    for t in range(256):
        pred = (u >= t) & valid
        union = (pred | gt).sum()
        curve.append((pred & gt).sum() / union if union else 0.0)
    return np.array(curve)


def test_peak_iou_oracle_and_reference():
    # hand oracle: u = [255, 127, 0], mask = [1, 1, 0]: t<=127 and t>0 -> pred {0,1}: IoU 1
    out = PeakIoU().update(torch.tensor([[[1.0, 0.5, 0.0]]]), torch.tensor([[[1, 1, 0]]])).compute()
    assert out["PeakIoU"] == 100.0 and out["peak_threshold_pooled"] == 1
    maps, _, masks = _random_maps(4, 5)
    metric = PeakIoU().update(torch.tensor(maps, dtype=torch.float32), masks)
    out = metric.compute()
    curves = [_peak_iou_loop(m, k) for m, k in zip(maps, masks)]
    assert out["reduction"] == "per_image"
    assert out["PeakIoU"] == pytest.approx(100 * np.mean([c.max() for c in curves]), abs=1e-9)
    u = [(np.float32(m) * 255).astype(np.uint8) for m in maps]
    inter = sum(np.array([((ui >= t) & (k == 1)).sum() for t in range(256)]) for ui, k in zip(u, masks))
    union = sum(np.array([(((ui >= t) & (k != 255)) | (k == 1)).sum() for t in range(256)])
                for ui, k in zip(u, masks))
    assert out["PeakIoU_pooled"] == pytest.approx(100 * (inter / union).max(), abs=1e-12)
    assert PeakIoU(reduction="pooled").update(maps, masks).compute()["PeakIoU"] == out["PeakIoU_pooled"]
    merged = PeakIoU().update(maps[:2], masks[:2]).merge(PeakIoU().update(maps[2:], masks[2:]))
    assert merged.compute()["PeakIoU"] == out["PeakIoU"]
    with pytest.raises(ValueError, match="reduction"):
        PeakIoU(reduction="mean")


# ------------------------------------------------------------------------- gloo all_reduce
def _metrics_for(maps, gts, masks, logits, labels):
    return [MaxBoxAcc(cam_curve_interval=0.01).update(maps, gts),
            LocalizationAccuracy(cam_curve_interval=0.01).update(maps, gts, logits, labels),
            PxAP().update(maps, masks), PeakIoU().update(maps, masks)]


def _summary(metrics):
    out = []
    for m in metrics:
        r = m.compute()
        out.append({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()})
    return out


def _worker(rank, world, port, path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        maps, gts, masks = _random_maps(5, 7)
        logits = torch.tensor(np.random.default_rng(6).random((7, 10)))
        labels = torch.arange(7)
        idx = list(range(rank, 7, world))
        metrics = _metrics_for(maps[idx], [gts[i] for i in idx], masks[idx], logits[idx], labels[idx])
        for m in metrics:
            m.all_reduce()
        if rank == 0:
            torch.save(_summary(metrics), path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_reduce_two_gloo_processes_equals_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
        distributed = torch.load(path, weights_only=False)
    maps, gts, masks = _random_maps(5, 7)
    logits = torch.tensor(np.random.default_rng(6).random((7, 10)))
    single = _summary(_metrics_for(maps, gts, masks, logits, torch.arange(7)))
    assert distributed == single


def test_all_reduce_without_process_group_is_the_identity():
    maps, gts, masks = _random_maps(5, 3)
    metric = PxAP()
    metric.update(maps, masks)
    before = metric.compute()
    assert metric.all_reduce() is metric
    assert metric.compute()["PxAP"] == before["PxAP"]


@pytest.mark.parametrize("metric", [PxAP, PeakIoU])
@pytest.mark.parametrize("bad, words", [("nan", "NaN"), ("above", "[0, 1]"), ("shape", "same shape")])
def test_dense_metrics_refuse_bad_maps(metric, bad, words):
    maps = torch.rand(2, 8, 8)
    masks = (torch.rand(2, 8, 8) > 0.5).long()
    if bad == "nan":
        maps[0, 0, 0] = float("nan")
    elif bad == "above":
        maps = maps * 2
    else:
        masks = masks[:, :4]
    with pytest.raises(ValueError) as info:
        metric().update(maps, masks)
    assert words in str(info.value)


def test_reversed_ground_truth_boxes_are_refused():
    with pytest.raises(ValueError, match="x0 <= x1"):
        MaxBoxAcc().update(torch.rand(1, 8, 8), [np.array([[5, 1, 2, 6]])])
