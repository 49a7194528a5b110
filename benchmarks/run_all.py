"""Benchmark every CAM method at every layer: a thin wrapper around ``camkit benchmark``.

Same flags as ``camkit benchmark`` (see ``python benchmarks/run_all.py --help``). Without arguments it
runs the real MobileNetV2 on the 50 annotated ImageNet dev images in ``../shared/assets`` and writes
to ``outputs/benchmark/``::

    python benchmarks/run_all.py
    python benchmarks/run_all.py --model efficientnet-lite0 --data ../shared/assets/imagenet-val-dev50 \\
        --layers _blocks.4 _blocks.10 _swish --out outputs/benchmark-lite0

``--readme`` runs that default benchmark, then regenerates ``docs/results.md`` (the README's results
tables, the command, date and machine they came from) and the README's copy of its tables, the block
between ``<!-- results:begin -->`` and ``<!-- results:end -->`` (``tests/test_results_page.py`` checks
that the two blocks are equal). ``--from DIR`` renders a finished run's ``DIR/results.json`` instead of
benchmarking again::

    python benchmarks/run_all.py --readme
    python benchmarks/run_all.py --readme --from outputs/benchmark

Timings are measured side by side (each method against the bare forward + grad floor, interleaved);
absolute images/s depend on the machine, which the report records.
"""
import argparse
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

from camkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
OUT = ROOT / "outputs" / "benchmark"
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results.md"
DEFAULT = ["benchmark", "--model", f"mobilenet_v2-tf:{ASSETS / 'weights' / 'mobilenet_v2_imagenet.pth'}",
           "--data", str(ASSETS / "imagenet-val-dev50"), "--layers", "features.6", "features.13",
           "features.18", "--out", str(OUT)]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
BLOCK = re.compile(re.escape(BEGIN) + r"\n(?P<body>.*?)" + re.escape(END), re.S)


# ----------------------------------------------------------------------------------------- the page
def _short(spec: str) -> str:
    """``mobilenet_v2-tf:/a/b/w.pth`` -> ``mobilenet_v2-tf:w.pth``; a folder -> its name (no machine paths)."""
    kind, sep, path = spec.partition(":")
    if not sep:
        return Path(spec.split(" (")[0]).name or spec
    return f"{kind}:{Path(path).name}" if path else kind


def results_block(result, run: dict) -> str:
    """The tables the README shows: MaxBoxAccV2 methods x layers and the cost ratios, with their source."""
    from camkit.bench import cost_ratio_markdown, quality_summary_markdown

    s = result.settings
    top1 = result.classification.get("top1")
    top1 = "-" if top1 is None else f"{top1:.1f}%"
    return "\n".join([
        "<!-- written by `python benchmarks/run_all.py --readme`: rerun it rather than editing this block -->",
        f"`{_short(str(s.get('model')))}` on `{_short(str(s.get('data')))}` ({s.get('images')} images), "
        f"wsolevaluation protocol (224x224 without crop, maps of the ground-truth class); classification "
        f"top-1 {top1}.", "",
        "MaxBoxAccV2 (%), methods × layers, shallow to deep; each layer's best in bold:", "",
        quality_summary_markdown(result, "MaxBoxAccV2"), ""] + _step_note(result) + [
        f"Cost per call relative to the floor (a bare forward plus one `autograd.grad` to the same layer), best "
        f"of {s.get('repeats')} interleaved rounds on a batch of {s.get('cost_batch')}, "
        f"{result.environment.get('device', 'cpu')} with {result.environment.get('torch_threads')} threads:", "",
        cost_ratio_markdown(result), ""] + _noise_note(result, run) + [
        f"Measured {run.get('date', 'on an unrecorded date')} by `{run.get('command', 'an unrecorded command')}`"
        + (f", rendered by `{run['rendered_by']}`." if run.get("rendered_by") else "."),
        ""])


def _step_note(result) -> list:
    """How far one box decision moves a MaxBoxAccV2 cell: 100 / (IoU thresholds x images)."""
    images = result.settings.get("images")
    if not images:
        return []
    return [f"One box decision moves a cell by {100 / (3 * images):.2f} (100 / (3 IoU thresholds × {images} "
            f"images)).", ""]


def _noise_note(result, run: dict) -> list:
    """A warning when a method timed below its floor: it contains the floor's work, so other load did it."""
    ratios = [r.ratio_to_floor for r in result.cost if r.method != "floor" and r.ratio_to_floor == r.ratio_to_floor]
    if not ratios or min(ratios) >= 0.95:
        return []
    load = (f" (1-minute load average {run['load_start']:.1f} at the start on "
            f"{result.environment.get('cpu_count')} cores)" if "load_start" in run else "")
    return [f"Ratios from {min(ratios):.2f}× to {max(ratios):.2f}×: a method includes the floor's forward and "
            f"backward, so a ratio below 1 means other jobs slowed the floor's best round{load}. Read this "
            f"run's cost ratios as load noise, not as costs; rerun on a quiet machine for those.", ""]


def results_page(result, run: dict) -> str:
    """``docs/results.md``: the README's block, the other metrics, the full cost table and the machine."""
    from camkit.bench import cost_markdown, metrics_present, quality_summary_markdown
    from camkit.bench.report import markdown_table

    env = result.environment
    others = [m for m in metrics_present(result) if m != "MaxBoxAccV2"]
    parts = ["# Results on a real model", "",
             "The numbers the README shows, regenerated by one command (it benchmarks, then rewrites this "
             "page and the README's copy of the block below; `--from outputs/benchmark` re-renders a "
             "finished run without benchmarking):", "",
             "```bash", "python benchmarks/run_all.py --readme", "```", "",
             BEGIN, results_block(result, run) + END, "",
             "## The other localisation metrics", "",
             "Same run, methods × layers (%; MaxBoxAcc@δ: every contour's box at IoU δ; GT-known, Top-1 and "
             "Top-5 Loc: the largest contour's box at IoU 50, at the best threshold).", ""]
    for metric in others:
        parts += [f"### {metric}", "", quality_summary_markdown(result, metric), ""]
    if result.peers:
        rows = [[p["peer"], p["method"], p["layer"], f"{p['max_abs_difference']:.2g}"
                 if p.get("max_abs_difference") is not None else "-", p.get("speed_ratio"), p.get("error") or ""]
                for p in result.peers]
        parts += ["## Against the other libraries", "",
                  f"The same method on the same {result.settings.get('cost_batch')} images; max |difference| "
                  f"after identical upsampling and min-max; speed ratio = peer seconds / camkit seconds (timed "
                  f"in the same run, so load noise applies as above).", "",
                  markdown_table(["peer", "method", "layer", "max abs diff", "speed ratio", "error"], rows), ""]
    parts += ["## Cost in full", "",
              "images/s of one call on the cost batch, its time over the floor and the peak memory above "
              "the level before the call.", "", cost_markdown(result), "",
              "## Where it ran", "",
              f"- command: `{run.get('command', 'not recorded')}` (the benchmark itself: `camkit benchmark "
              f"--model mobilenet_v2-tf:WEIGHTS --data imagenet-val-dev50 --layers "
              f"{' '.join(result.settings.get('layers', []))}`, repeats {result.settings.get('repeats')}, "
              f"cost batch {result.settings.get('cost_batch')})",
              f"- date: {run.get('date', 'not recorded')}; wall time "
              + (f"{run['wall_seconds'] / 60:.1f} min" if "wall_seconds" in run else "not recorded"),
              f"- machine: {env.get('cpu', 'unknown CPU')}, {env.get('cpu_count')} cores, "
              f"{env.get('torch_threads')} torch threads, device {env.get('device')}; {env.get('platform')}",
              f"- software: camkit {env.get('camkit')}, torch {env.get('torch')}, torchvision "
              f"{env.get('torchvision')}, Python {env.get('python')}",
              "- load: " + (f"1-minute load average {run['load_start']:.2f} at the start and "
                            f"{run['load_end']:.2f} at the end, niceness {run.get('niceness')}"
                            if "load_start" in run else "not recorded")
              + (f" ({run['note']})" if run.get("note") else "")
              + "; the machine was shared with other jobs, so images/s and, under heavy load, the ratios too "
                "vary from run to run",
              "- peers: " + "; ".join([f"{len(result.peers)} comparisons above"] * bool(result.peers)
                                      + [f"{k} skipped, {v}" for k, v in result.skipped_peers.items()]), ""]
    return "\n".join(parts)


def block_of(text: str, where: str) -> str:
    """The text between the results markers (exactly one pair).

    Raises:
        ValueError: no pair, or more than one (names ``where``).
    """
    found = BLOCK.findall(text)
    if len(found) != 1 or text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"{where} needs exactly one {BEGIN} ... {END} block, found {len(found)}; "
                         f"add the two marker lines where the results tables go")
    return found[0]


def replace_block(text: str, block: str, where: str) -> str:
    """``text`` with its results block replaced by ``block`` (see :func:`block_of` for the errors)."""
    block_of(text, where)
    return BLOCK.sub(lambda _: f"{BEGIN}\n{block}{END}", text)


# ------------------------------------------------------------------------------------------- running
def _benchmark(command: str) -> Path:
    """Run the default benchmark into ``OUT`` and record when, how long and under what load."""
    started, load_start = time.time(), os.getloadavg()[0]
    code = main(DEFAULT)
    if code:
        raise SystemExit(code)
    run = {"command": command, "date": datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
           .strftime("%Y-%m-%d %H:%M UTC"), "wall_seconds": round(time.time() - started, 1),
           "load_start": load_start, "load_end": os.getloadavg()[0], "niceness": os.nice(0)}
    (OUT / "run.json").write_text(json.dumps(run, indent=1))
    return OUT


def write_readme_results(folder, readme=None, results=None, rendered_by=None) -> None:
    """Render ``folder/results.json`` (and its ``run.json``, when there) into ``results`` (default
    ``docs/results.md``) and ``readme``'s block (default ``README.md``); ``rendered_by`` names the command
    that rendered a finished run. Everything is checked before either file is written.

    Raises:
        FileNotFoundError, ValueError: no usable result in ``folder``, or ``readme`` lacks its block.
    """
    from camkit.bench import load_result

    folder, readme, results = Path(folder), Path(readme or README), Path(results or RESULTS)
    result = load_result(folder)
    record = folder / "run.json"
    run = json.loads(record.read_text()) if record.is_file() else {}
    if rendered_by:
        run["rendered_by"] = rendered_by
    page = results_page(result, run)
    new_readme = replace_block(readme.read_text(), block_of(page, "the generated page"), str(readme))
    results.write_text(page)
    readme.write_text(new_readme)
    print(f"wrote {results} and the results block of {readme}")


def readme_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run_all.py",
                                     description="regenerate docs/results.md and the README's results block")
    parser.add_argument("--readme", action="store_true", required=True,
                        help="run the default benchmark, then write docs/results.md and the README block")
    parser.add_argument("--from", dest="source", default=None, metavar="DIR",
                        help="render DIR/results.json (a finished run) instead of benchmarking")
    args = parser.parse_args(argv)
    try:
        if args.source is None:
            if not ASSETS.is_dir():
                raise FileNotFoundError(f"the default assets are missing ({ASSETS})")
            folder = _benchmark("python benchmarks/run_all.py --readme")
            write_readme_results(folder)
        else:
            write_readme_results(args.source, rendered_by=f"python benchmarks/run_all.py --readme --from {args.source}")
    except (FileNotFoundError, ValueError) as error:
        print(f"run_all.py --readme: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--readme" in argv:
        sys.exit(readme_main(argv))
    if not argv:
        if not ASSETS.is_dir():
            sys.exit(f"no arguments given and the default assets are missing ({ASSETS}); "
                     f"see python {sys.argv[0]} --help")
        argv = DEFAULT
    elif argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["benchmark"] + argv
    elif argv[0] in ("-h", "--help"):
        print("benchmarks/run_all.py takes the flags of camkit benchmark (below), or --readme [--from DIR] to "
              "regenerate docs/results.md and the README's results block (see --readme --help).\n")
        argv = ["benchmark", "--help"]
    sys.exit(main(argv))
