"""A benchmark's result and how it is written: markdown tables, ``report.md``, CSV, JSON and plots.

:func:`write_outputs` writes, in one folder: ``report.md`` (the tables and the environment),
``results.json`` (:meth:`BenchmarkResult.to_dict`; NaN as ``null``), ``quality.csv``, ``cost.csv``,
``peers.csv`` (when peers ran) and the figures ``quality_<metric>.png`` (metric against layer, one
line per method), ``cost.png`` (the cost table) and ``cost_ratio.png`` (time / floor against layer).
File names hold no spaces: ``Top-1 Loc`` is written as ``quality_Top-1_Loc.png`` and ``MaxBoxAcc@50``
as ``quality_MaxBoxAcc_at_50.png``.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

from camkit.bench.cost import CostRow

__all__ = ["QUALITY_METRICS", "BenchmarkResult", "markdown_table", "quality_markdown", "cost_markdown",
           "quality_summary_markdown", "cost_ratio_markdown", "metrics_present", "report_markdown", "figure_name",
           "write_outputs", "load_result"]

#: The localisation metrics of a benchmark, in table order (those that apply are reported: ``BoxAcc*``, the
#: single-threshold accuracies, instead of ``MaxBoxAcc*`` under a box rule other than ``"wsol"``).
QUALITY_METRICS = ("MaxBoxAccV2", "MaxBoxAcc@30", "MaxBoxAcc@50", "MaxBoxAcc@70", "BoxAcc", "BoxAcc@30", "BoxAcc@50",
                   "BoxAcc@70", "GT-known", "Top-1 Loc", "Top-5 Loc", "PxAP", "pIoU", "PeakIoU")

PEER_COLUMNS = ("peer", "method", "layer", "max_abs_difference", "mean_abs_difference", "camkit_seconds",
                "peer_seconds", "speed_ratio", "error")


@dataclass
class BenchmarkResult:
    """Everything a benchmark run measured.

    Attributes:
        quality: ``{method: {layer: {metric: value}}}`` (metrics that do not apply are absent).
        classification: ``{"top1": %, "top5": %, "images": n}``.
        cost: :class:`camkit.bench.cost.CostRow` list.
        peers: one dict per (peer, method, layer): ``max_abs_difference``, ``speed_ratio`` ...
        skipped_peers: ``{peer: reason}``.
        environment, settings: where and how it ran.
    """

    quality: Dict[str, Dict[str, Dict[str, float]]]
    classification: Dict[str, float]
    cost: List[CostRow]
    peers: List[Dict[str, Any]] = field(default_factory=list)
    skipped_peers: Dict[str, str] = field(default_factory=dict)
    environment: Dict[str, Any] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """The result as standard JSON values: NaN and infinities become ``None``."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "BenchmarkResult":
        """The inverse of :meth:`to_dict` (``None`` numbers come back as NaN).

        Raises:
            ValueError: ``data`` lacks ``quality``, ``classification`` or ``cost``.
        """
        missing = [key for key in ("quality", "classification", "cost") if key not in data]
        if missing:
            raise ValueError(f"not a benchmark result: no {', '.join(missing)} (expected results.json as written "
                             f"by camkit benchmark)")
        nan = lambda v: math.nan if v is None else v  # noqa: E731
        quality = {m: {l: {k: nan(v) for k, v in values.items()} for l, values in per.items()}
                   for m, per in data["quality"].items()}
        numbers = ("seconds", "images_per_second", "ratio_to_floor", "peak_memory_mib")
        cost = [CostRow(**{k: (nan(v) if k in numbers else v) for k, v in row.items()}) for row in data["cost"]]
        return cls(quality=quality, classification=dict(data["classification"]), cost=cost,
                   peers=list(data.get("peers", [])), skipped_peers=dict(data.get("skipped_peers", {})),
                   environment=dict(data.get("environment", {})), settings=dict(data.get("settings", {})))


def load_result(path) -> BenchmarkResult:
    """Read a ``results.json`` written by :func:`write_outputs` (or a folder holding one).

    Raises:
        FileNotFoundError: no such file; ValueError: the file is not a benchmark result.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark result at {path}: run camkit benchmark --out DIR first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rerun the benchmark") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a benchmark result (expected a JSON object)")
    return BenchmarkResult.from_dict(data)


def _json_safe(value):
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ tables
def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value, digits: int = 2) -> str:
    if _missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _sci(value) -> str:
    return "-" if value is None else f"{value:.2g}"


def _csv(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table; floats with two decimals, missing values (``None``, NaN) as ``-``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def quality_markdown(result: BenchmarkResult, metric: str = "MaxBoxAccV2") -> str:
    """Methods x layers table of one metric (the BagCAMs-style table)."""
    layers = _layers(result)
    rows = [[method] + [result.quality[method].get(layer, {}).get(metric, math.nan) for layer in layers]
            for method in result.quality]
    return markdown_table(["method \\ layer"] + layers, rows)


def _layers(result: BenchmarkResult) -> List[str]:
    return list(result.settings.get("layers") or sorted({l for v in result.quality.values() for l in v}))


def quality_summary_markdown(result: BenchmarkResult, metric: str = "MaxBoxAccV2") -> str:
    """Methods x layers table of one metric for a page: one decimal, ``–`` where it does not apply, and each
    layer's best value in bold (every tied one)."""
    layers = _layers(result)
    values = {m: [per.get(layer, {}).get(metric) for layer in layers] for m, per in result.quality.items()}
    best = [max((round(v[i], 1) for v in values.values() if not _missing(v[i])), default=None)
            for i in range(len(layers))]
    rows = [[method] + ["–" if _missing(v) else (f"**{v:.1f}**" if round(v, 1) == best[i] else f"{v:.1f}")
                        for i, v in enumerate(row)] for method, row in values.items()]
    return markdown_table(["method \\ layer"] + layers, rows)


def cost_ratio_markdown(result: BenchmarkResult) -> str:
    """Methods x layers table of time / floor (``1.07×``), the floor's own row in images/s and ``all`` (every
    method in one call) last; ``–`` for a call that failed or was not measured."""
    layers = _layers(result)
    cells: Dict[str, Dict[str, str]] = {}
    for row in result.cost:
        if row.method == "floor":
            text = "–" if _missing(row.images_per_second) else f"{row.images_per_second:.1f} images/s"
        else:
            text = "–" if _missing(row.ratio_to_floor) else f"{row.ratio_to_floor:.2f}×"
        cells.setdefault(row.method, {})[row.layer] = text
    order = (["floor"] if "floor" in cells else []) + [m for m in cells if m not in ("floor", "all")]
    order += ["all"] if "all" in cells else []
    names = {"floor": "floor (forward + grad)", "all": "all methods, one call"}
    return markdown_table(["method \\ layer"] + layers,
                          [[names.get(m, m)] + [cells[m].get(layer, "–") for layer in layers] for m in order])


def _cost_rows(result: BenchmarkResult) -> List[list]:
    return [[r.method, r.layer, r.images_per_second, r.ratio_to_floor, r.peak_memory_mib] for r in result.cost]


def cost_markdown(result: BenchmarkResult) -> str:
    """The cost table: method, layer, images/s, time / floor and peak memory."""
    memory = "peak GPU MiB" if result.environment.get("device", "cpu").startswith("cuda") else "peak RSS MiB"
    return markdown_table(["method", "layer", "images/s", "x floor", memory], _cost_rows(result))


def metrics_present(result: BenchmarkResult) -> List[str]:
    """The metrics the result holds: those of :data:`QUALITY_METRICS` in its order, then any others."""
    seen = {m for per_layer in result.quality.values() for values in per_layer.values() for m in values}
    ordered = [m for m in QUALITY_METRICS if m in seen]
    return ordered + sorted(seen - set(ordered))


def _peers_section(result: BenchmarkResult) -> List[str]:
    parts = ["## Peers", ""]
    if result.peers:
        rows = [[p["peer"], p["method"], p["layer"], _sci(p.get("max_abs_difference")),
                 p.get("speed_ratio", math.nan), p.get("error", "")] for p in result.peers]
        parts += ["max |difference| after identical upsampling and min-max; speed ratio = peer "
                  "seconds / camkit seconds.", "",
                  markdown_table(["peer", "method", "layer", "max abs diff", "speed ratio", "error"], rows), ""]
    parts += [f"- {peer}: skipped, {reason}" for peer, reason in result.skipped_peers.items()]
    return parts + [""]


def report_markdown(result: BenchmarkResult) -> str:
    """``report.md``: the settings, one table per metric, the cost, the peers and the environment."""
    s, env = result.settings, result.environment
    parts = [f"# camkit benchmark: {s.get('model')} on {s.get('data')}", "",
             f"{s.get('images')} images, methods {', '.join(s.get('methods', []))}, "
             f"layers {', '.join(s.get('layers', []))}. Classification top-1: "
             f"{_fmt(result.classification.get('top1'))}%.", ""]
    if s.get("box_rule", "wsol") != "wsol":
        parts += [f"Boxes by the rule `{s['box_rule']}`, which sets its own threshold: BoxAcc is the accuracy at its "
                  f"boxes, with no threshold sweep.", ""]
    for metric in metrics_present(result):
        parts += [f"## {metric} (methods x layers)", "", quality_markdown(result, metric), ""]
    parts += ["## Cost", "",
              f"Best of {s.get('repeats')} interleaved rounds on one batch of {s.get('cost_batch')} "
              f"images. *floor* = a bare forward + one `torch.autograd.grad` to the layer; *all* = every "
              f"method in one camkit call. Peak memory is above the level before the call.", "",
              cost_markdown(result), ""]
    if result.peers or result.skipped_peers:
        parts += _peers_section(result)
    parts += ["## Environment", "", "```", json.dumps(env, indent=1), "```", ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------- outputs
def figure_name(metric: str) -> str:
    """The file name of a metric's figure: ``"Top-1 Loc"`` -> ``"quality_Top-1_Loc.png"``.

    ``@`` becomes ``_at_``; any run of characters other than letters, digits, ``.``, ``+`` and ``-``
    becomes one ``_``, so names hold no spaces.
    """
    return "quality_" + re.sub(r"[^\w.+-]+", "_", metric.replace("@", "_at_")) + ".png"


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(header))
        writer.writerows([[_csv(v) for v in row] for row in rows])


def _write_figures(result: BenchmarkResult, out: Path, metrics: Sequence[str]) -> Dict[str, Path]:
    from camkit.viz import metric_by_layer_figure, save_figure, table_figure

    paths: Dict[str, Path] = {}
    layers = result.settings.get("layers")
    for metric in metrics:
        values = {m: {l: v.get(metric, math.nan) for l, v in per.items()} for m, per in result.quality.items()}
        path = out / figure_name(metric)
        save_figure(metric_by_layer_figure(values, metric, layers), path)
        paths[f"figure_{metric}"] = path
    paths["cost_figure"] = out / "cost.png"
    save_figure(table_figure(["method", "layer", "images/s", "x floor", "peak MiB"], _cost_rows(result),
                                     title="cost per call"), paths["cost_figure"])
    ratios: Dict[str, Dict[str, float]] = {}
    for r in result.cost:
        if r.method != "floor":
            ratios.setdefault(r.method, {})[r.layer] = r.ratio_to_floor
    paths["cost_ratio_figure"] = out / "cost_ratio.png"
    save_figure(metric_by_layer_figure(ratios, "time / floor", layers), paths["cost_ratio_figure"])
    return paths


def write_outputs(result: BenchmarkResult, out_dir, figures: bool = True) -> Dict[str, Path]:
    """Write the report, tables and (unless ``figures=False``) plots of ``result`` into ``out_dir``.

    Returns:
        ``{name: path}``: ``report``, ``json``, ``quality_csv``, ``cost_csv``, ``peers_csv`` (when peers
        ran), ``figure_<metric>``, ``cost_figure`` and ``cost_ratio_figure``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.md", "json": out / "results.json", "quality_csv": out / "quality.csv",
             "cost_csv": out / "cost.csv"}
    paths["report"].write_text(report_markdown(result))
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1))
    metrics = metrics_present(result)
    _write_csv(paths["quality_csv"], ["method", "layer"] + metrics,
               [[method, layer] + [values.get(m) for m in metrics]
                for method, per_layer in result.quality.items() for layer, values in per_layer.items()])
    names = list(CostRow.__dataclass_fields__)
    _write_csv(paths["cost_csv"], names, [[getattr(row, n) for n in names] for row in result.cost])
    if result.peers:
        paths["peers_csv"] = out / "peers.csv"
        _write_csv(paths["peers_csv"], PEER_COLUMNS, [[row.get(k) for k in PEER_COLUMNS] for row in result.peers])
    if figures:
        paths.update(_write_figures(result, out, metrics))
    return paths
