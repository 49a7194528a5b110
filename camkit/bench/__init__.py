"""Benchmark every CAM method at every layer: localisation quality and cost, side by side.

:func:`run_benchmark` (and ``camkit benchmark``, ``benchmarks/run_all.py``) measure, for one model and
one dataset:

* **quality** per (method, layer), computed by :func:`camkit.evaluation.evaluate` with maps of the
  ground-truth class (wsolevaluation): MaxBoxAccV2 and MaxBoxAcc@{30,50,70} (every contour's box),
  GT-known / Top-1 / Top-5 Loc (largest contour, IoU 50, at the best threshold), PxAP, pIoU and
  Peak-IoU where masks exist, and the model's classification top-1;
* **cost** per (method, layer) on one fixed batch (:mod:`camkit.bench.cost`): images per second, the
  ratio to the *floor* (a bare forward with one hook plus one ``torch.autograd.grad`` to that layer,
  timed in the same rounds, interleaved, so machine load affects both alike) and the peak memory above
  the baseline (CUDA allocator statistics on GPU; on CPU the process's peak RSS, reset through
  ``/proc/self/clear_refs`` after freed heap pages are returned with glibc's ``malloc_trim``). Seconds
  are the best of the timed rounds;
* optional **peers** (:mod:`camkit.bench.peers`: pytorch-grad-cam, torchcam, captum) when importable:
  the same method on the same inputs, their maximum absolute difference from camkit after identical
  post-processing (bilinear upsampling with ``align_corners=False``, then per-image min-max), and their
  speed relative to camkit (``peer seconds / camkit seconds``). Missing peers are listed as skipped.

:func:`write_outputs` (:mod:`camkit.bench.report`) writes ``report.md``, ``results.json``,
``quality.csv``, ``cost.csv``, ``peers.csv`` and the figures. Example::

    from camkit.bench import run_benchmark, write_outputs
    from camkit.data.open import open_dataset
    from camkit.model_spec import load_model

    loaded = load_model("efficientnet-lite0")
    p = loaded.preprocess
    dataset = open_dataset("../shared/assets/imagenet-val-dev50", image_size=p.size[0],
                           normalize=(p.mean, p.std))
    write_outputs(run_benchmark(loaded, dataset, layers=["_blocks.10", "_swish"]), "bench/")
"""
from camkit.bench.cost import CostRow, PeakMemory, environment, floor_pass, measure_cost, synchronize
from camkit.bench.peers import PEERS, compare_peers
from camkit.bench.report import (QUALITY_METRICS, BenchmarkResult, cost_markdown, cost_ratio_markdown, load_result,
                                 metrics_present, quality_markdown, quality_summary_markdown, report_markdown,
                                 write_outputs)
from camkit.bench.run import DEFAULT_METHODS, evaluate_quality, run_benchmark

__all__ = ["run_benchmark", "BenchmarkResult", "evaluate_quality", "measure_cost", "CostRow", "floor_pass",
           "PeakMemory", "environment", "synchronize", "compare_peers", "PEERS", "write_outputs",
           "report_markdown", "quality_markdown", "cost_markdown", "quality_summary_markdown", "cost_ratio_markdown",
           "load_result", "metrics_present", "QUALITY_METRICS", "DEFAULT_METHODS"]
