"""Bad input to ``train()`` and to resuming: a clear error (its type, a message that names the problem
and the way out) and an output folder left exactly as it was: same names, same bytes, no new file,
no temporary file."""
import shutil

import pytest
import torch

from camkit.data.synthetic import make_synthetic
from camkit.train import CheckpointError, get_recipe, load_checkpoint, save_checkpoint, train
from camkit.train.recipes import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread

OPTIONS = {"widths": (4, 8, 8, 8)}
DATA = make_synthetic(32, num_classes=3, image_size=32, seed=21)
CONFIG = get_recipe("cam").make_config(
    "synthetic-cpu", epochs=2, batch_size=8, resize_size=32, crop_size=32, mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25), progress=False, eval_every=0, log_every=1)
FRESH = "start fresh with resume=False / --no-resume / another --out"




@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run stopped mid-epoch (global step 3 of 4 per epoch): resuming it would train on."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    train("cam", DATA, backbone="tiny", num_classes=3, config=CONFIG.replace(max_steps=3), out_dir=out,
          model_options=OPTIONS)
    return out


def _train(out, recipe="cam", data=DATA, backbone="tiny", num_classes=3, options=OPTIONS, **config_changes):
    return train(recipe, data, backbone=backbone, num_classes=num_classes, out_dir=out,
                 config=CONFIG.replace(**config_changes), model_options=options)


def _snapshot(folder):
    """``{relative path: bytes}`` of every file under ``folder`` (hidden ones included)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leave(out):
    """No preparation: the interrupted run as it is."""


def _truncate(out):
    blob = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(blob[: len(blob) // 3])


def _garbage(out):
    (out / "checkpoint.pt").write_bytes(b"\x00not a zip archive at all" * 10)


def _plain_state_dict(out):
    torch.save({"weight": torch.ones(3)}, out / "checkpoint.pt")


def _unfinished(out):
    torch.save({"format": "camkit-checkpoint", "model": {}, "model_spec": {}}, out / "checkpoint.pt")


def _older_without_num_samples(out):
    payload = load_checkpoint(out / "checkpoint.pt")
    del payload["num_samples"]
    save_checkpoint(payload, out / "checkpoint.pt")


def _weights_of_another_model(out):
    payload = load_checkpoint(out / "checkpoint.pt")
    payload["model"] = get_recipe("cam").build_model("tiny", 3, widths=(4, 8, 8, 16)).state_dict()
    save_checkpoint(payload, out / "checkpoint.pt")


#: (id, prepare(out), call(out), error type, message fragments)
CASES = [
    # arguments and config values
    ("unknown recipe", _leave, lambda out: _train(out, recipe="no-such-recipe"), KeyError,
     ["unknown recipe 'no-such-recipe'", "registered recipes"]),
    ("unknown backbone, fresh", _leave, lambda out: train(
        "cam", DATA, backbone="resnet-9000", num_classes=3, out_dir=out, config=CONFIG, resume=False), KeyError,
     ["unknown backbone 'resnet-9000'", "available"]),
    ("batch_size 0", _leave, lambda out: _train(out, batch_size=0), ValueError,
     ["TrainConfig.batch_size must be an integer >= 1", "got 0"]),
    ("negative lr", _leave, lambda out: _train(out, lr=-0.1), ValueError,
     ["TrainConfig.lr must be a finite number >= 0", "got -0.1"]),
    ("crop larger than resize", _leave, lambda out: _train(out, crop_size=40), ValueError,
     ["TrainConfig.crop_size must be an integer >= 1 and <= resize_size", "got 40"]),
    ("unknown optimizer", _leave, lambda out: _train(out, optimizer="lbfgs"), ValueError,
     ["TrainConfig.optimizer must be 'sgd' or 'adam'", "got 'lbfgs'"]),
    ("unknown TrainConfig field", _leave, lambda out: _train(out, learning_rate=0.1), TypeError,
     ["unknown TrainConfig field(s) ['learning_rate']", "valid fields"]),
    ("config not a TrainConfig", _leave, lambda out: train(
        "cam", DATA, backbone="tiny", num_classes=3, out_dir=out, config={"lr": 0.1}), TypeError,
     ["config must be a camkit.train.TrainConfig", "got dict"]),
    ("num_classes 0", _leave, lambda out: _train(out, num_classes=0), ValueError,
     ["num_classes must be an integer >= 1", "got 0"]),
    ("empty training set", _leave, lambda out: _train(out, data=[]), ValueError,
     ["the training set is empty", "at least one sample"]),
    # resuming another run
    ("resume, other batch_size", _leave, lambda out: _train(out, batch_size=16), CheckpointError,
     ["was written with batch_size=8, this run has batch_size=16", "resume with the same value or " + FRESH]),
    ("resume, other seed", _leave, lambda out: _train(out, seed=1), CheckpointError,
     ["seed=0, this run has seed=1", FRESH]),
    ("resume, other lr", _leave, lambda out: _train(out, lr=0.5), CheckpointError,
     ["lr=0.05, this run has lr=0.5", FRESH]),
    ("resume, other optimizer", _leave, lambda out: _train(out, optimizer="adam"), CheckpointError,
     ["optimizer='sgd', this run has optimizer='adam'", FRESH]),
    ("resume, other augmentation", _leave, lambda out: _train(out, flip=False), CheckpointError,
     ["flip=True, this run has flip=False", FRESH]),
    ("resume, other num_classes", _leave, lambda out: _train(out, num_classes=4), CheckpointError,
     ["num_classes=3, this run has num_classes=4", FRESH]),
    ("resume, other backbone width", _leave, lambda out: _train(out, options={"widths": (4, 8, 8, 16)}),
     CheckpointError, ["model_options={'widths': (4, 8, 8, 8)}", "model_options={'widths': (4, 8, 8, 16)}", FRESH]),
    ("resume, other backbone", _leave, lambda out: _train(out, backbone="mobilenet_v2", options={}),
     CheckpointError, ["backbone='tiny'", "backbone='mobilenet_v2'", FRESH]),
    ("resume, other recipe", _leave, lambda out: _train(out, recipe="cicam"), CheckpointError,
     ["recipe='cam'", "recipe='cicam'", FRESH]),
    ("resume, other training set length", _leave,
     lambda out: _train(out, data=make_synthetic(40, num_classes=3, image_size=32, seed=21)), CheckpointError,
     ["num_samples=32, this run has num_samples=40", FRESH]),
    ("resume, several fields", _leave, lambda out: _train(out, batch_size=4, seed=2), CheckpointError,
     ["batch_size=8, seed=0, this run has batch_size=4, seed=2", "the same values"]),
    # broken or foreign checkpoints
    ("truncated checkpoint", _truncate, _train, CheckpointError,
     ["cannot resume", "checkpoint.pt is not a readable checkpoint (truncated or corrupted?)", FRESH]),
    ("garbage checkpoint", _garbage, _train, CheckpointError, ["not a readable checkpoint", FRESH]),
    ("plain state dict", _plain_state_dict, _train, CheckpointError,
     ["is not a camkit checkpoint (no format='camkit-checkpoint' marker)", FRESH]),
    ("unfinished checkpoint", _unfinished, _train, CheckpointError, ["is incomplete", FRESH]),
    ("checkpoint without num_samples", _older_without_num_samples, _train, CheckpointError,
     ["lacks ['num_samples']", "cannot be resumed exactly", FRESH]),
    ("weights of another model", _weights_of_another_model, _train, CheckpointError,
     ["does not fit this run's model or optimizer", "size mismatch", FRESH]),
]


@pytest.mark.parametrize("prepare, call, error, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_and_leaves_the_folder_unchanged(interrupted_run, tmp_path, prepare, call, error,
                                                         fragments):
    out = tmp_path / "run"
    shutil.copytree(interrupted_run, out)
    prepare(out)
    before = _snapshot(out)
    with pytest.raises(error) as raised:
        call(out)
    message = str(raised.value.args[0]) if raised.value.args else str(raised.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert _snapshot(out) == before, "the failed call changed the output folder"


FRESH_FOLDER_CASES = [
    ("unknown recipe", dict(recipe="no-such-recipe"), KeyError, "unknown recipe"),
    ("unknown backbone", dict(backbone="resnet-9000"), KeyError, "unknown backbone"),
    ("unknown model option", dict(options={"widthz": 3}), TypeError, "widthz"),
    ("empty training set", dict(data=[]), ValueError, "the training set is empty"),
]


@pytest.mark.parametrize("arguments, error, fragment", [c[1:] for c in FRESH_FOLDER_CASES],
                         ids=[c[0] for c in FRESH_FOLDER_CASES])
def test_bad_input_creates_no_output_folder(tmp_path, arguments, error, fragment):
    with pytest.raises(error, match=fragment):
        _train(tmp_path / "new", **arguments)
    assert not (tmp_path / "new").exists()


def test_the_interrupted_run_itself_resumes(interrupted_run, tmp_path):
    """The fixture is resumable as it is: the errors above come from the bad input alone."""
    out = tmp_path / "run"
    shutil.copytree(interrupted_run, out)
    _train(out)
    assert load_checkpoint(out / "checkpoint.pt")["global_step"] == 8


def test_config_checks_cover_every_field():
    """Each TrainConfig field has a value check (so a new field cannot skip validation)."""
    import dataclasses
    from camkit.train.recipes import _CONFIG_RULES
    assert sorted(rule[0] for rule in _CONFIG_RULES) == sorted(f.name for f in dataclasses.fields(TrainConfig))
