"""Cost of the one-pass engine against the floor every gradient CAM pays.

Setup (issue 2): ResNet-50, random init, eval mode, batch 8 at 224x224, on the default device.

* **floor(L)**: a bare forward plus ``torch.autograd.grad`` of the top-1 logits to layer ``L``'s
  output (:func:`camkit.bench.floor_pass`; no graph upstream of ``L``, as in the engine).
* **camkit, all five at layer4**: one ``camkit.explain`` call with CAM, Grad-CAM, Grad-CAM++, PCS
  and BagCAMs at ``layer4``; its ratio is to floor(layer4). Goal: <= 1.3.
* **camkit, all five at layer1-4**: one call at four layers; its ratio is to floor(layer1). BagCAMs
  needs a second (guided) backward, which from layer1 costs about as much as the first; the same call
  without BagCAMs shows the one-backward cost.
* **one call per (method, layer)**: what a one-method-per-call library has to do, for scale.

All variants run interleaved round by round, the warm-up round is discarded, and each is reported
as its best round (other load on a shared machine only adds time). Peak memory is measured on a
separate call per variant (CUDA allocator peak, or the RSS high-water mark on CPU).

With ``--model vit_b_16`` (issue 12): torchvision's ViT-B/16 (random init, its zero-initialised head
re-drawn), all five methods at the last block's first norm ``encoder.layers.encoder_layer_11.ln_1``
(CAM runs with a warning there: the head reads the class token, not pooled patch tokens) against
floor(that layer), Grad-CAM alone and every registered one-pass method (``methods="all"``) for
comparison, and pytorch-grad-cam's ``GradCAM`` (when installed) with the ``reshape_transform`` of its
ViT tutorial on the same batch and top-1 classes, its maps upsampled and normalised as camkit's.
Goal: <= 1.15.

    python benchmarks/bench_extract.py [--model resnet50|vit_b_16] [--batch 8] [--size 224] [--rounds 5]
        [--threads N]
"""
import argparse
import time
import warnings

import torch
import torchvision

import camkit
from camkit.bench import PeakMemory, environment, floor_pass, synchronize

METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")
FOUR = ("layer1", "layer2", "layer3", "layer4")
VIT_LAYER = "encoder.layers.encoder_layer_11.ln_1"


def variants(model, batch):
    """``{name: (callable, floor name or None)}``; floors first."""
    one = camkit.Explainer(model, methods=METHODS, layers="layer4")
    four = camkit.Explainer(model, methods=METHODS, layers=FOUR)
    four_unguided = camkit.Explainer(model, methods=METHODS[:-1], layers=FOUR)
    singles = [camkit.Explainer(model, methods=method, layers=layer)
               for layer in FOUR for method in METHODS if not (method == "cam" and layer != "layer4")]
    return {
        "floor(layer4)": (lambda: floor_pass(model, batch, "layer4"), None),
        "floor(layer1)": (lambda: floor_pass(model, batch, "layer1"), None),
        "camkit: all five at layer4": (lambda: one(batch), "floor(layer4)"),
        "camkit: all five at layer1-4": (lambda: four(batch), "floor(layer1)"),
        "camkit: all but bagcams at layer1-4": (lambda: four_unguided(batch), "floor(layer1)"),
        f"one call per (method, layer), {len(singles)} calls": (lambda: [s(batch) for s in singles],
                                                                  "floor(layer1)"),
    }


def vit_reshape_transform(tensor, height=14, width=14):
    """pytorch-grad-cam's ViT tutorial transform: ``(B, 1 + h * w, C)`` tokens -> ``(B, C, h, w)``."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def grad_cam_peer(model, batch):
    """pytorch-grad-cam's ``GradCAM`` at ``VIT_LAYER`` with its tutorial reshape, or ``None`` if not installed.

    The CAM object is made inside the call (its hooks exist only while it runs, as in its README's
    ``with`` form), so the other variants run on a model without its hooks."""
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        return None
    layer = dict(model.named_modules())[VIT_LAYER]
    side = batch.shape[-1] // 16

    def run():
        with GradCAM(model=model, target_layers=[layer],
                     reshape_transform=lambda t: vit_reshape_transform(t, side, side)) as cam:
            return cam(input_tensor=batch, targets=None)     # None: the top-1 classes, as camkit
    return run


def vit_variants(model, batch):
    """``{name: (callable, floor name or None)}`` for ViT-B/16 at the last block's ``ln_1``."""
    five = camkit.Explainer(model, methods=METHODS, layers=VIT_LAYER)
    gradcam = camkit.Explainer(model, methods="gradcam", layers=VIT_LAYER)
    every = camkit.Explainer(model, methods="all", layers=VIT_LAYER)
    jobs = {
        "floor(ln_1)": (lambda: floor_pass(model, batch, VIT_LAYER), None),
        "camkit: all five at ln_1": (lambda: five(batch), "floor(ln_1)"),
        "camkit: gradcam at ln_1": (lambda: gradcam(batch), "floor(ln_1)"),
        "camkit: methods='all' at ln_1": (lambda: every(batch), "floor(ln_1)"),
    }
    peer = grad_cam_peer(model, batch)
    if peer is not None:
        jobs["pytorch-grad-cam: GradCAM + reshape_transform at ln_1"] = (peer, "floor(ln_1)")
    else:
        print("pytorch-grad-cam is not installed: its row is skipped (pip install -e '.[peers]')")
    return jobs


def build(name, device):
    """The benchmarked model, random init, eval mode, on ``device``."""
    torch.manual_seed(0)
    if name == "resnet50":
        return torchvision.models.resnet50(weights=None).eval().to(device)
    model = torchvision.models.vit_b_16(weights=None).eval()
    with torch.no_grad():       # torchvision zero-initialises the head: every gradient would be zero
        model.heads.head.weight.normal_(0, 0.02)
    return model.to(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("resnet50", "vit_b_16"), default="resnet50",
                        help="the model to time (random init): ResNet-50 at layer1-4, or ViT-B/16 at its last ln_1")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (the best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", camkit.CAMHeadWarning)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(args.model, device)
    batch = torch.randn(args.batch, 3, args.size, args.size, device=device)
    jobs = (variants if args.model == "resnet50" else vit_variants)(model, batch)

    peaks = {}
    for name, (run, _) in jobs.items():
        run()                                    # warm-up
        with PeakMemory(device) as memory:
            run()
        peaks[name] = memory.peak_mib
    times = {name: [] for name in jobs}
    for _ in range(args.rounds):
        for name, (run, _) in jobs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)

    env = environment(device)
    title = "ResNet-50" if args.model == "resnet50" else "ViT-B/16"
    print(f"{title} (random init, eval), batch {args.batch} at {args.size}x{args.size}, device {device}, "
          f"torch {env['torch']}, {env['torch_threads']} threads, best of {args.rounds} interleaved rounds")
    print("| variant | ratio to its floor | images/s | peak memory (MiB) |")
    print("|---|---|---|---|")
    for name, (_, floor) in jobs.items():
        best = min(times[name])
        ratio = f"{best / min(times[floor]):.2f}x {floor}" if floor else "1.00 (floor)"
        print(f"| {name} | {ratio} | {args.batch / best:.1f} | {peaks[name]:.0f} |")


if __name__ == "__main__":
    main()
