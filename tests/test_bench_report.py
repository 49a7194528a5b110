"""camkit.bench.report: markdown tables, the written files and their names."""
import csv
import math

import pytest

from camkit.bench import report
from camkit.bench.cost import CostRow


def test_quality_table_layout():
    result = report.BenchmarkResult(
        quality={"cam": {"l2": {"MaxBoxAccV2": 61.0}}, "gradcam": {"l1": {"MaxBoxAccV2": 40.25},
                                                                   "l2": {"MaxBoxAccV2": 60.5}}},
        classification={"top1": 50.0}, cost=[], settings={"layers": ["l1", "l2"]})
    assert report.quality_markdown(result).splitlines() == [
        "| method \\ layer | l1 | l2 |", "|---|---|---|", "| cam | - | 61.00 |", "| gradcam | 40.25 | 60.50 |"]


@pytest.mark.parametrize("metric, name", [
    ("Top-1 Loc", "quality_Top-1_Loc.png"),
    ("Top-5 Loc", "quality_Top-5_Loc.png"),
    ("MaxBoxAcc@50", "quality_MaxBoxAcc_at_50.png"),
    ("MaxBoxAccV2", "quality_MaxBoxAccV2.png"),
    ("GT-known", "quality_GT-known.png"),
    ("a / b  c", "quality_a_b_c.png"),
])
def test_figure_names_hold_no_spaces(metric, name):
    assert report.figure_name(metric) == name


def _result():
    quality = {"cam": {"l1": {"MaxBoxAccV2": 50.0, "Top-1 Loc": 25.0, "MaxBoxAcc@50": 40.0}},
               "gradcam": {"l1": {"MaxBoxAccV2": 50.0, "Top-1 Loc": 25.0, "MaxBoxAcc@50": 45.0}}}
    cost = [CostRow("floor", "l1", 0.5, 4.0, 1.0, 3.0, 2), CostRow("cam", "l1", 0.6, 2 / 0.6, 1.2, 4.0, 2),
            CostRow("gradcam", "l1", math.nan, math.nan, math.nan, math.nan, 2, "RuntimeError: no")]
    peers = [{"peer": "torchcam", "method": "cam", "layer": "l1", "max_abs_difference": 1e-7,
              "mean_abs_difference": 1e-8, "camkit_seconds": 0.5, "peer_seconds": 1.0, "speed_ratio": 2.0},
             {"peer": "captum", "method": "gradcam", "layer": "l1", "error": "TypeError: bad"}]
    return report.BenchmarkResult(quality=quality, classification={"top1": 50.0, "images": 2}, cost=cost,
                                  peers=peers, skipped_peers={"pytorch-grad-cam": "not importable"},
                                  settings={"layers": ["l1"], "methods": ["cam", "gradcam"], "repeats": 3})


def test_written_file_names_hold_no_spaces(tmp_path):
    paths = report.write_outputs(_result(), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if " " in n] == []
    assert {"quality_Top-1_Loc.png", "quality_MaxBoxAcc_at_50.png", "quality_MaxBoxAccV2.png"} <= set(names)
    assert paths["figure_Top-1 Loc"] == tmp_path / "quality_Top-1_Loc.png"
    assert set(names) == {p.name for p in paths.values()}  # every file written is returned, and only those


def test_peers_csv_and_report_section(tmp_path):
    paths = report.write_outputs(_result(), tmp_path, figures=False)
    with open(paths["peers_csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["peer", "method", "layer", "max_abs_difference", "mean_abs_difference",
                             "camkit_seconds", "peer_seconds", "speed_ratio", "error"]
    assert rows[0]["speed_ratio"] == "2.0" and rows[0]["error"] == ""
    assert rows[1]["error"] == "TypeError: bad" and rows[1]["speed_ratio"] == ""
    text = paths["report"].read_text()
    assert "| torchcam | cam | l1 | 1e-07 | 2.00 |  |" in text
    assert "- pytorch-grad-cam: skipped, not importable" in text
    assert not any(p.suffix == ".png" for p in tmp_path.iterdir())
