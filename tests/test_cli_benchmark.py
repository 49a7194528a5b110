"""``camkit benchmark`` (camkit.cli.benchmark) driven through its own parser: outputs, help, bad flags."""
import argparse
import json
import re

import pytest

from camkit.cli import benchmark as command
from camkit.cli.common import Formatter, UsageError
from test_cli import TINY

SMALL = ["--model", TINY, "--data", "synthetic:num_images=6,image_size=32,num_classes=4", "--methods", "gradcam", "cam",
         "--layers", "layer1", "layer2", "--repeats", "3", "--cost-batch", "3", "--batch-size", "4",
         "--no-peers"]


def parser():
    built = argparse.ArgumentParser(prog="camkit benchmark", formatter_class=Formatter,
                                    description=command.DESCRIPTION, epilog=command.EPILOG)
    command.add_arguments(built)
    return built


def test_run_writes_the_outputs_and_prints_the_tables(tmp_path, capsys):
    out = tmp_path / "bench"
    assert command.run(parser().parse_args(SMALL + ["--out", str(out), "--no-figures"])) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["data"] == "synthetic:num_images=6,image_size=32,num_classes=4"
    assert result["settings"]["layers"] == ["layer1", "layer2"] and result["classification"]["images"] == 6
    assert {r["method"] for r in result["cost"]} == {"floor", "gradcam", "cam", "all"}
    printed = capsys.readouterr().out
    assert "| method | layer | images/s |" in printed and "MaxBoxAccV2" in printed and "PxAP" in printed


def test_a_box_rule_reports_the_single_threshold_accuracy(tmp_path, capsys):
    out = tmp_path / "bench"
    assert command.run(parser().parse_args(SMALL + ["--out", str(out), "--no-figures", "--box-rule", "fixed:0.5"])) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["box_rule"] == "fixed:0.5"
    for per_layer in result["quality"].values():
        for row in per_layer.values():
            assert {"BoxAcc", "BoxAcc@50"} <= set(row) and "MaxBoxAccV2" not in row
    assert "Boxes by the rule `fixed:0.5`" in (out / "report.md").read_text()
    assert "BoxAcc" in capsys.readouterr().out


def test_help_has_examples_datasets_and_model_specifiers():
    text = parser().format_help()
    for part in ("examples:", "datasets (--data):", "model specifiers (--model):", "--metadata DIR",
                 "--data synthetic:num_images=64", "--repeats R"):
        assert part in text, part
    assert "wsol:" not in text and "synthetic:N" not in text  # the old --data forms are gone


@pytest.mark.parametrize("flags, error, fragment", [
    (["--threads", "0"], UsageError, "--threads must be at least 1, got 0"),
    (["--repeats", "0"], ValueError, "repeats must be a positive integer, got 0"),
    (["--cost-batch", "0"], ValueError, "cost_batch must be a positive integer, got 0"),
    (["--data", "synthetic:6:32"], ValueError, "expected KEY=VALUE, got '6:32'"),
    (["--data", "no/such/folder"], FileNotFoundError, "is not an existing folder nor 'synthetic"),
    (["--data", "synthetic", "--metadata", "meta"], ValueError, "--metadata applies to a wsolevaluation"),
    (["--methods", "nosuch"], ValueError, "unknown method 'nosuch'. Available:"),
    (["--layers", "nolayer"], ValueError, "the model has no layer named 'nolayer'"),
    (["--box-rule", "otsu"], UsageError, "--box-rule: unknown box rule 'otsu'"),
])
def test_bad_flags_fail_clearly_and_leave_no_output_folder(tmp_path, flags, error, fragment):
    out = tmp_path / "bench"
    args = parser().parse_args(SMALL + ["--out", str(out)] + flags)
    with pytest.raises(error, match=re.escape(fragment)):
        command.run(args)
    assert not out.exists()


def test_an_out_path_that_is_a_file_is_refused_and_kept(tmp_path):
    out = tmp_path / "bench"
    out.write_text("mine")
    with pytest.raises(UsageError, match="--out .* exists and is not a folder"):
        command.run(parser().parse_args(SMALL + ["--out", str(out)]))
    assert out.read_text() == "mine"
