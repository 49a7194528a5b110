"""Cost of camkit's perturbation methods (Score-CAM, Ablation-CAM) against pytorch-grad-cam and a floor.

Setup (issue 13): ResNet-50, random init, eval mode, at ``layer4`` (2048 channels), batch 8 at 224x224
by default, on CUDA when available. Both methods score one perturbed copy per (image, channel): 8 x 2048.

* **floor**: that many bare ``model(x)`` forwards under ``torch.no_grad()`` on one fixed chunk of
  ``--chunk`` images (no masking, no hooks): what a method pays that reruns the whole network per copy,
  as Score-CAM must (its copies differ at the input). camkit's Ablation-CAM runs only the part after the
  layer on its copies (the part before it once per image and chunk), so it falls far below this floor.
* **camkit**: one ``camkit.explain`` call of the method (first forward and backward included).
* **pytorch-grad-cam** 1.5.x ``ScoreCAM`` / ``AblationCAM`` with ``batch_size = --chunk``, when installed.

Per method, camkit and the peer run in alternation for ``--rounds`` rounds after ``--warmup`` untimed ones,
so that load from other jobs falls on both alike; the best round of each is reported, and the ratio of
the two bests. Maps are not compared here: tests/test_peer_parity.py checks them against the peer.

    python benchmarks/bench_perturbation.py [--batch 8] [--size 224] [--rounds 2] [--chunk 32] [--no-floor]
"""
import argparse
import contextlib
import io
import time

import torch
import torchvision

import camkit


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def _best_times(fns, rounds, device, warmup):
    """Best seconds of each of ``fns``, run in alternation: ``warmup`` untimed rounds, then ``rounds``."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], _timed(fn, device))
    return best


def _peer_runner(model, images, method, chunk):
    try:
        from pytorch_grad_cam import AblationCAM, ScoreCAM
    except ImportError:
        return None
    peer_cls = {"scorecam": ScoreCAM, "ablationcam": AblationCAM}[method]

    def run():
        cam = peer_cls(model=model, target_layers=[model.layer4])
        cam.batch_size = chunk
        with contextlib.redirect_stderr(io.StringIO()):     # its per-image tqdm bars
            cam(input_tensor=images, targets=None)          # top-1 targets, as camkit's default

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description="Score-CAM and Ablation-CAM on ResNet-50 layer4 against "
                                                 "pytorch-grad-cam (if installed) and the floor of bare forwards.")
    parser.add_argument("--batch", type=int, default=8, help="images per explain call (default 8)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after the warm-up (default 2)")
    parser.add_argument("--chunk", type=int, default=32, help="perturbed copies per forward: camkit's "
                                                              "batch_size option and the peer's (default 32)")
    parser.add_argument("--methods", nargs="+", default=["scorecam", "ablationcam"],
                        choices=["scorecam", "ablationcam"], help="methods to time")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor of bare forwards")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    forwards = args.batch * 2048
    print(f"device {device}, ResNet-50 layer4, batch {args.batch} at {args.size}x{args.size}, {forwards} "
          f"perturbed copies in chunks of {args.chunk}, best of {args.rounds} alternating rounds", flush=True)
    print("| variant | seconds | / floor | pytorch-grad-cam / camkit |\n|---|---|---|---|", flush=True)
    floor_s = None
    if not args.no_floor:
        chunk = images[:1].expand(args.chunk, -1, -1, -1).contiguous()

        def floor():
            with torch.no_grad():
                for start in range(0, forwards, args.chunk):
                    model(chunk[:min(args.chunk, forwards - start)])

        (floor_s,) = _best_times([floor], args.rounds, device, args.warmup)
        print(f"| floor ({forwards} bare forwards) | {floor_s:.2f} | 1.00 | |", flush=True)

    def of_floor(seconds):
        return "" if floor_s is None else f"{seconds / floor_s:.2f}"

    for method in args.methods:
        options = {method: {"batch_size": args.chunk}}

        def ours():
            camkit.explain(model, images, methods=method, layers="layer4", method_options=options)

        peer = _peer_runner(model, images, method, args.chunk)
        times = _best_times([ours] + ([peer] if peer else []), args.rounds, device, args.warmup)
        print(f"| camkit {method} | {times[0]:.2f} | {of_floor(times[0])} | |", flush=True)
        if peer is None:
            print(f"| pytorch-grad-cam {method} | not installed | | |", flush=True)
        else:
            print(f"| pytorch-grad-cam {method} | {times[1]:.2f} | {of_floor(times[1])} | "
                  f"{times[1] / times[0]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
