"""GPU readiness (marker ``cuda``; skipped where CUDA is absent): every method's maps on the GPU equal the
CPU's to 1e-5, the device-side metrics equal the host's exactly on the same maps, nothing leaves the
device before the metric stage, and explain works under ``torch.autocast`` with float32 maps.

Run them with ``python -m pytest -q -m cuda tests/test_cuda.py`` (``benchmarks/gpu_suite.sh`` does).
"""
import numpy as np
import pytest
import torch

import camkit
from camkit.metric_pool import maps_to_uint8
from camkit.methods.registry import STANDARD_METHODS
from camkit.metrics import PeakIoU, PxAP
from test_evaluate import TinyNet, ToyWSOL

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.filterwarnings("ignore::camkit.heads.CAMHeadWarning")]
LAYERS = ("features.1", "features.3")


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 3, 24, 24, generator=g), torch.tensor([0, 1, 2, 3])


def _explain(device, autocast_dtype=None):
    model = TinyNet().to(device)
    images, labels = _inputs()
    explainer = camkit.Explainer(model, methods=STANDARD_METHODS, layers=LAYERS)
    if autocast_dtype is None:
        return explainer(images.to(device), target=labels.to(device))
    with torch.autocast(device_type="cuda", dtype=autocast_dtype):
        return explainer(images.to(device), target=labels.to(device))


def test_every_method_gives_the_same_maps_on_cpu_and_gpu_and_keeps_them_on_the_gpu():
    cpu, gpu = _explain("cpu"), _explain("cuda")
    assert list(cpu.maps) == list(gpu.maps) and len(cpu.maps) > 0
    for key, maps in gpu.maps.items():
        assert maps.device.type == "cuda", key
        torch.testing.assert_close(maps.cpu(), cpu.maps[key], rtol=0, atol=1e-5, msg=str(key))
    assert gpu.logits.device.type == "cuda"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_explain_under_autocast_gives_float32_maps(dtype):
    reference, mixed = _explain("cuda"), _explain("cuda", dtype)
    assert list(mixed.maps) == list(reference.maps)
    for key, maps in mixed.maps.items():
        assert maps.dtype == torch.float32, key
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, key


def test_device_side_metrics_equal_the_host_ones_exactly_on_the_same_maps():
    g = torch.Generator().manual_seed(4)
    maps = torch.rand(6, 32, 32, generator=g)
    maps[0] = torch.randint(0, 256, (32, 32), generator=g) / 255   # exact multiples of 1/255
    masks = torch.randint(0, 2, (6, 32, 32), generator=g).to(torch.uint8)
    masks[:, 0] = 255
    assert torch.equal(maps_to_uint8(maps.cuda()).cpu(), maps_to_uint8(maps))
    cpu_pxap, gpu_pxap = PxAP(0.01).update(maps, masks), PxAP(0.01).update(maps.cuda(), masks.cuda())
    assert torch.equal(gpu_pxap.hist_pos.cpu(), cpu_pxap.hist_pos)
    assert torch.equal(gpu_pxap.hist_neg.cpu(), cpu_pxap.hist_neg)
    assert gpu_pxap.compute() == cpu_pxap.compute()
    cpu_peak, gpu_peak = PeakIoU().update(maps, masks), PeakIoU().update(maps.cuda(), masks.cuda())
    for name in PeakIoU._state:
        assert torch.equal(getattr(gpu_peak, name).cpu(), getattr(cpu_peak, name)), name


def test_evaluate_on_the_gpu_matches_the_cpu_table():
    dataset = ToyWSOL(n=6)
    options = dict(methods=("gradcam", "pcs"), layers=LAYERS, batch_size=3, cam_curve_interval=0.01,
                   progress=False, metric_workers=0)
    cpu = camkit.evaluate(TinyNet(), dataset, **options)
    gpu = camkit.evaluate(TinyNet().cuda(), dataset, **options)
    assert list(cpu) == list(gpu)
    for key in cpu:
        for column, value in cpu[key].items():
            # maps equal to 1e-5 can still put a pixel on the other side of a uint8 step: one image of 6
            # at one threshold at most moves an accuracy by 100/6 points
            if isinstance(value, float):
                assert abs(gpu[key][column] - value) <= 100 / 6 + 1e-9, (key, column)


def _fam_run(device):
    """FAM's map, Grad-CAM on its classifier and its recipe loss terms on ``device``."""
    from camkit.models import build_fam
    from camkit.train.fam_losses import fam_loss
    from camkit.train.recipes import CAM_CONFIG, StepState
    torch.manual_seed(0)
    model = build_fam("tiny", num_classes=4, widths=(4, 8, 8, 8), norm="none",
                      class_weights=[1.0, 2.0, 3.0, 4.0]).to(device).eval()
    images, labels = (t.to(device) for t in _inputs())
    exp = camkit.explain(model, images, methods=["fam", "gradcam"], target=labels)
    terms = fam_loss(model(images, return_maps=True), {"label": labels}, StepState(0, 0, 0, model, CAM_CONFIG))
    return exp, terms


def test_fam_map_and_losses_on_the_gpu_equal_the_cpu():
    (cpu, cpu_terms), (gpu, gpu_terms) = _fam_run("cpu"), _fam_run("cuda")
    assert list(cpu.maps) == list(gpu.maps) == [("fam", "features"), ("gradcam", "features")]
    for key, maps in gpu.maps.items():
        assert maps.device.type == "cuda"
        torch.testing.assert_close(maps.cpu(), cpu.maps[key], atol=1e-5, rtol=0)
    for name, value in gpu_terms.items():
        assert value.device.type == "cuda"
        torch.testing.assert_close(value.cpu(), cpu_terms[name], atol=1e-5, rtol=1e-5)
