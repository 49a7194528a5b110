"""The README's results tables are docs/results.md's, as ``benchmarks/run_all.py --readme`` wrote them.

Nothing here benchmarks: the README's block is compared with the file's, and the renderers are checked on
hand-built results against tables written out by hand.
"""
import importlib.util
import json
import math
from pathlib import Path

import pytest

from camkit.bench import BenchmarkResult, CostRow, cost_ratio_markdown, load_result, quality_summary_markdown

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
run_all = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_all)


def _tiny_result() -> BenchmarkResult:
    quality = {"cam": {"a": {"MaxBoxAccV2": math.nan}, "b": {"MaxBoxAccV2": 42.04}},
               "gradcam": {"a": {"MaxBoxAccV2": 28.0}, "b": {"MaxBoxAccV2": 41.96}},
               "bagcams": {"a": {"MaxBoxAccV2": 45.333}, "b": {"MaxBoxAccV2": 40.7}}}
    cost = [CostRow("floor", "a", 0.5, 16.0, 1.0, 10.0, 8), CostRow("cam", "a", math.nan, math.nan, math.nan,
                                                                     math.nan, 8, "no head"),
            CostRow("gradcam", "a", 0.52, 15.4, 1.04, 11.0, 8), CostRow("all", "a", 0.6, 13.3, 1.2, 12.0, 8),
            CostRow("floor", "b", 0.25, 32.0, 1.0, 5.0, 8), CostRow("cam", "b", 0.25, 32.0, 0.995, 5.0, 8),
            CostRow("gradcam", "b", 0.26, 30.8, 1.04, 5.0, 8), CostRow("all", "b", 0.3, 26.7, 1.2, 6.0, 8)]
    return BenchmarkResult(quality=quality, classification={"top1": 56.0, "top5": 80.0, "images": 50}, cost=cost,
                           skipped_peers={"captum": "not installed"},
                           environment={"device": "cpu", "torch_threads": 2, "cpu_count": 2},
                           settings={"model": "mobilenet_v2-tf:/x/y/w.pth", "data": "/x/dev50", "images": 50,
                                     "layers": ["a", "b"], "repeats": 3, "cost_batch": 8})


def test_quality_summary_has_one_decimal_dashes_and_each_layers_best_in_bold_ties_included():
    # at b, 42.04 and 41.96 both read 42.0: both are the best
    assert quality_summary_markdown(_tiny_result()) == "\n".join([
        "| method \\ layer | a | b |", "|---|---|---|",
        "| cam | – | **42.0** |",
        "| gradcam | 28.0 | **42.0** |",
        "| bagcams | **45.3** | 40.7 |"])


def test_cost_ratio_table_puts_the_floor_first_in_images_per_second_and_all_last():
    assert cost_ratio_markdown(_tiny_result()) == "\n".join([
        "| method \\ layer | a | b |", "|---|---|---|",
        "| floor (forward + grad) | 16.0 images/s | 32.0 images/s |",
        "| cam | – | 0.99× |",        # the float 0.995 lies just below 0.995: 0.99
        "| gradcam | 1.04× | 1.04× |",
        "| all methods, one call | 1.20× | 1.20× |"])


def test_a_result_survives_results_json(tmp_path):
    result = _tiny_result()
    (tmp_path / "results.json").write_text(json.dumps(result.to_dict()))
    back = load_result(tmp_path)
    assert math.isnan(back.quality["cam"]["a"]["MaxBoxAccV2"]) and math.isnan(back.cost[1].seconds)
    assert back.cost[1].error == "no head" and back.settings == result.settings
    assert quality_summary_markdown(back) == quality_summary_markdown(result)
    assert cost_ratio_markdown(back) == cost_ratio_markdown(result)


@pytest.mark.parametrize("content, error, words", [
    (None, FileNotFoundError, "run camkit benchmark"),
    ("{not json", ValueError, "not valid JSON"),
    ("[1, 2]", ValueError, "expected a JSON object"),
    ('{"quality": {}}', ValueError, "no classification, cost"),
])
def test_load_result_refuses_what_is_not_a_result(tmp_path, content, error, words):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    with pytest.raises(error, match=words):
        load_result(tmp_path)


def test_the_page_names_its_command_date_and_machine_and_hides_machine_paths():
    run = {"command": "python benchmarks/run_all.py --readme", "date": "2026-12-03 11:40 UTC",
           "wall_seconds": 300.0, "load_start": 1.5, "load_end": 2.0, "niceness": 10}
    page = run_all.results_page(_tiny_result(), run)
    block = run_all.block_of(page, "page")
    assert "`mobilenet_v2-tf:w.pth` on `dev50` (50 images)" in block and "/x/" not in block
    assert "top-1 56.0%" in block and "2026-12-03 11:40 UTC" in block
    assert "python benchmarks/run_all.py --readme" in block
    assert "wall time 5.0 min" in page and "niceness 10" in page and "captum skipped" in page


@pytest.mark.parametrize("text, found", [("no markers\n", 0),
                                          (f"{run_all.BEGIN}\nx\n{run_all.END}\n{run_all.BEGIN}\ny\n{run_all.END}\n", 2),
                                          (f"{run_all.BEGIN}\nx\n", 0)])
def test_a_readme_without_exactly_one_block_is_refused_and_left_alone(tmp_path, text, found):
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text(text)
    (tmp_path / "results.json").write_text(json.dumps(_tiny_result().to_dict()))
    with pytest.raises(ValueError, match=f"exactly one .* found {found}"):
        run_all.write_readme_results(tmp_path, readme=readme, results=results)
    assert readme.read_text() == text and not results.exists()


def test_write_readme_results_replaces_only_the_block(tmp_path):
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text(f"# top\n\n{run_all.BEGIN}\nold numbers\n{run_all.END}\n\nbelow\n")
    (tmp_path / "results.json").write_text(json.dumps(_tiny_result().to_dict()))
    run_all.write_readme_results(tmp_path, readme=readme, results=results)
    text = readme.read_text()
    assert text.startswith("# top\n\n") and text.endswith(f"{run_all.END}\n\nbelow\n") and "old numbers" not in text
    assert run_all.block_of(text, "readme") == run_all.block_of(results.read_text(), "page")
    assert "an unrecorded command" in run_all.block_of(text, "readme")  # no run.json: said, not invented


def test_the_readme_block_is_docs_results_md_block():
    readme = run_all.block_of((ROOT / "README.md").read_text(), "README.md")
    page = run_all.block_of((ROOT / "docs" / "results.md").read_text(), "docs/results.md")
    assert readme == page, "README.md's results block differs from docs/results.md: run " \
                           "python benchmarks/run_all.py --readme (or --readme --from outputs/benchmark)"


def test_the_results_page_is_in_the_docs_nav_and_linked_from_the_readme():
    assert "results.md" in (ROOT / "mkdocs.yml").read_text()
    assert "(docs/results.md)" in (ROOT / "README.md").read_text()


def test_readme_mode_benchmarks_records_the_run_and_writes_both_blocks(tmp_path, monkeypatch, capsys):
    from test_cli_benchmark import SMALL

    out = tmp_path / "bench"
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text(f"intro\n{run_all.BEGIN}\n{run_all.END}\n")
    monkeypatch.setattr(run_all, "ASSETS", tmp_path)
    monkeypatch.setattr(run_all, "OUT", out)
    monkeypatch.setattr(run_all, "DEFAULT", ["benchmark"] + SMALL + ["--no-figures", "--out", str(out)])
    monkeypatch.setattr(run_all, "README", readme)
    monkeypatch.setattr(run_all, "RESULTS", results)
    assert run_all.readme_main(["--readme"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "python benchmarks/run_all.py --readme" and run["wall_seconds"] >= 0
    assert {"date", "load_start", "load_end", "niceness"} <= set(run)
    block = run_all.block_of(readme.read_text(), "readme")
    assert block == run_all.block_of(results.read_text(), "page")
    assert f"Measured {run['date']} by `python benchmarks/run_all.py --readme`." in block
    assert "| gradcam |" in block and "| floor (forward + grad) |" in block


def test_readme_mode_from_a_folder_without_a_result_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text(f"{run_all.BEGIN}\nkept\n{run_all.END}\n")
    monkeypatch.setattr(run_all, "README", readme)
    monkeypatch.setattr(run_all, "RESULTS", results)
    assert run_all.readme_main(["--readme", "--from", str(tmp_path / "nothing")]) == 2
    assert "no benchmark result at" in capsys.readouterr().err
    assert "kept" in readme.read_text() and not results.exists()


def test_a_ratio_below_the_floor_is_flagged_as_load_noise():
    result = _tiny_result()
    assert "load noise" not in run_all.results_block(result, {})
    result.cost[5].ratio_to_floor = 0.56
    assert "Ratios from 0.56× to 1.20×" in run_all.results_block(result, {"load_start": 5.1})
