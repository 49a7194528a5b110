"""Cost of camkit's perturbation methods (Score-CAM, Ablation-CAM) against their floor.

Setup (issue 13): ResNet-50, random init, eval mode, at ``layer4`` (2048 channels), batch 8 at 224x224
by default, on CUDA when available. Both methods need one forward per (image, channel): 8 x 2048.

* **floor**: the same number of bare ``model(x)`` forwards under ``torch.no_grad()`` on one fixed
  chunk of ``batch_size`` images (no masking, no hooks, no bookkeeping): what any implementation pays.
* **camkit**: one ``camkit.explain`` call of the method (first forward and backward included).

Each variant runs ``--rounds`` times after ``--warmup`` untimed rounds (default 1); the best round is reported (other load only
adds time). pytorch-grad-cam's ScoreCAM / AblationCAM are timed as well when the package is importable.

    PYTHONPATH=. python benchmarks/bench_perturbation.py [--batch 8] [--size 224] [--rounds 2] [--chunk 64]
"""
import argparse
import time

import torch
import torchvision

import camkit


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, rounds, device, warmup=1):
    for _ in range(warmup):
        fn()
    _synchronize(device)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _peer_timer(model, images, method, chunk):
    try:
        from pytorch_grad_cam import AblationCAM, ScoreCAM
    except ImportError:
        return None
    peer_cls = {"scorecam": ScoreCAM, "ablationcam": AblationCAM}[method]

    def run():
        cam = peer_cls(model=model, target_layers=[model.layer4])
        cam.batch_size = chunk
        cam(input_tensor=images, targets=None)        # top-1 targets, as camkit's default

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description="Score-CAM and Ablation-CAM on ResNet-50 layer4 against "
                                                 "the floor of their forwards (and pytorch-grad-cam if installed).")
    parser.add_argument("--batch", type=int, default=8, help="images per explain call (default 8)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after one warm-up (default 2)")
    parser.add_argument("--chunk", type=int, default=64, help="masked forwards per chunk, camkit's "
                                                              "batch_size option (default 64)")
    parser.add_argument("--methods", nargs="+", default=["scorecam", "ablationcam"],
                        choices=["scorecam", "ablationcam"], help="methods to time")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    forwards = args.batch * 2048
    chunk = images[:1].expand(args.chunk, -1, -1, -1).contiguous()

    def floor():
        with torch.no_grad():
            for start in range(0, forwards, args.chunk):
                model(chunk[:min(args.chunk, forwards - start)])

    floor_s = _best_time(floor, args.rounds, device, args.warmup)
    print(f"device {device}, ResNet-50 layer4, batch {args.batch} at {args.size}x{args.size}, "
          f"{forwards} forwards in chunks of {args.chunk}")
    print(f"| variant | seconds | / floor |\n|---|---|---|\n| floor ({forwards} bare forwards) | {floor_s:.3f} | 1.00 |")
    for method in args.methods:
        options = {method: {"batch_size": args.chunk}}
        seconds = _best_time(lambda: camkit.explain(model, images, methods=method, layers="layer4",
                                                    method_options=options), args.rounds, device, args.warmup)
        print(f"| camkit {method} | {seconds:.3f} | {seconds / floor_s:.2f} |")
        peer = _peer_timer(model, images, method, args.chunk)
        if peer is None:
            print(f"| pytorch-grad-cam {method} | not installed | – |")
        else:
            peer_s = _best_time(peer, args.rounds, device, args.warmup)
            print(f"| pytorch-grad-cam {method} | {peer_s:.3f} | {peer_s / floor_s:.2f} |")


if __name__ == "__main__":
    main()
