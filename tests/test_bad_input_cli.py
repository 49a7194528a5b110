"""The command line refuses ordinary mistakes with one line on stderr and exit status 2, and leaves nothing.

Each case runs ``camkit.cli.main`` in a folder holding two pictures and a corrupt image; afterwards
the folder's files (names and bytes) are exactly as before: no ``--out`` folder, no partial output.
"""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit import cli

TINY = str(Path(__file__).with_name("cli_tiny_model.py")) + ":tiny"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "notes.txt").write_text("not a picture")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(folder: Path):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


EXPLAIN = ["explain", "photo.png", "--model", TINY, "--out", "out"]
TRAIN = ["train", "cam", "--data", "synthetic:num_images=8,image_size=16", "--backbone", "tiny", "--out", "run",
         "--no-progress"]
EVALUATE = ["evaluate", "--model", TINY, "--data", "synthetic:num_images=4,image_size=32,num_classes=4", "--no-progress"]

CASES = [
    # explain
    (EXPLAIN + ["--methods", "all"], "unknown method 'all'"),
    (EXPLAIN + ["--methods", "gradcamm"], "Did you mean gradcam"),
    (EXPLAIN + ["--layers", "layer3"], "layer3"),
    (EXPLAIN + ["--target", "9"], "out of range"),
    (EXPLAIN + ["--target", "sqare"], "unknown class name 'sqare'"),
    (["explain", "missing.png", "--model", TINY, "--out", "out"], "image file(s) not found: missing.png"),
    (["explain", "corrupt.png", "--model", TINY, "--out", "out"], "corrupt.png"),
    (["explain", "notes.txt", "--model", TINY, "--out", "out"], "notes.txt"),
    (["explain", "photo.png", "--model", "not a model", "--out", "out"], "cannot understand the model specifier"),
    (["explain", "photo.png", "--model", "nowhere.py:tiny", "--out", "out"], "nowhere.py"),
    (EXPLAIN + ["--device", "cuda:7"] if torch.cuda.is_available() else EXPLAIN + ["--device", "cuda"], "CUDA"),
    (EXPLAIN + ["--device", "gpu"], "is not a torch device"),
    (EXPLAIN + ["--mean", "0.1", "0.2"], "--mean takes 1 or 3 values"),
    (EXPLAIN + ["--batch-size", "0"], "--batch-size must be at least 1"),
    (EXPLAIN + ["--box-threshold", "1.5"], "--box-threshold must be in [0, 1]"),
    (EXPLAIN + ["--box-rule", "otsu"], "--box-rule: unknown box rule 'otsu'"),
    (EXPLAIN + ["--box-rule", "wsol"], "--box-rule wsol is the evaluation's threshold sweep"),
    (EXPLAIN + ["--box-rule", "pas", "--box-threshold", "0.3"], "give --box-threshold or --box-rule, not both"),
    (["explain", "photo.png", "--model", TINY, "--out", "photo.png"], "exists and is not a folder"),
    (EXPLAIN + ["--preset", "best"], "best"),
    (EXPLAIN + ["--preset", "recommended", "--methods", "pcs"], "give --preset or --methods/--layers, not both"),
    (EXPLAIN + ["--preset", "classic", "--layers", "layer1"], "give --preset or --methods/--layers, not both"),
    # evaluate
    (EVALUATE[:3] + ["--data", "nowhere"], "is not an existing folder nor 'synthetic"),
    (EVALUATE + ["--methods", "gradcamm"], "unknown method 'gradcamm'"),
    (EVALUATE + ["--layers", "layer9"], "layer9"),
    (EVALUATE + ["--batch-size", "0"], "--batch-size must be at least 1"),
    (EVALUATE + ["--box-rule", "fixed:2"], "--box-rule: box rule 'fixed:2'"),
    (EVALUATE + ["--method-options", "cam=1"], "--method-options takes METHOD.OPTION=VALUE"),
    (EVALUATE + ["--protocol", "center-crop", "--crop-size", "300"], "--crop-size must be between 1 and"),
    (EVALUATE[:3] + ["--data", "synthetic:num_imagez=4"], "unknown key(s) ['num_imagez']"),
    # train
    (["train", "camm"] + TRAIN[2:], "camm"),
    (TRAIN[:4] + ["--backbone", "tiny2"] + TRAIN[6:], "tiny2"),
    (TRAIN + ["--preset", "fast"], "fast"),
    (TRAIN + ["--set", "no_such_field=1"], "no_such_field"),
    (TRAIN + ["--set", "lr"], "expected KEY=VALUE"),
    (TRAIN + ["--num-classes", "0"], "--num-classes must be at least 1"),
    (TRAIN + ["--box-rule", "otsu"], "--box-rule: unknown box rule 'otsu'"),
    (TRAIN + ["--box-rule", "fixed:1.5"], "--box-rule: box rule 'fixed:1.5'"),
]


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES])
def test_user_errors_are_one_line_with_status_2_and_leave_nothing(workdir, capsys, argv, fragment):
    before = _snapshot(workdir)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"camkit {argv[0]}: error: ")
    assert _snapshot(workdir) == before


def test_debug_shows_the_traceback(workdir):
    with pytest.raises(ValueError, match="unknown method 'gradcamm'"):
        cli.main(["--debug"] + EXPLAIN + ["--methods", "gradcamm"])
    with pytest.raises(ValueError, match="unknown method 'gradcamm'"):
        cli.main(EXPLAIN + ["--methods", "gradcamm", "--debug"])


def test_list_methods_needs_no_image_or_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", "--list-methods"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("cam", "gradcam", "gradcam++", "pcs", "bagcams", "causal"):
        assert any(line.split()[0] == name for line in out.splitlines())


def test_an_existing_out_folder_is_never_removed(workdir):
    (workdir / "out").mkdir()
    assert cli.main(EXPLAIN + ["--methods", "gradcamm"]) == 2
    assert (workdir / "out").is_dir()
