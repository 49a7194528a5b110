"""KD-CI-CAM student recipe (camkit.train.kd_student): routing, the loss against a float64 reference
written from the formula, bad input refused at build time, and teachers -> student -> resume through
the shared loop (a changed teacher file refuses the resume)."""
import hashlib
import json
import math

import pytest
import torch

from camkit.train import kd_student
from camkit.train.checkpoint import CheckpointError, load_checkpoint_model, save_checkpoint
from camkit.train.kd_recipe import build_kd_cls_teacher, build_kd_loc_teacher
from camkit.train.kd_student import build_kd_student, kd_student_loss, prepare_student_options, route_samples
from camkit.train.recipes import StepState, get_recipe

torch.set_num_threads(1)
WIDTHS = (4, 8, 8, 8)
TEACHER_BUILD = {"kd-cls-teacher": build_kd_cls_teacher, "kd-loc-teacher": build_kd_loc_teacher}


# ---------------------------------------------------------------- routing

def test_routes_are_equally_likely_within_binomial_bounds():
    steps, per_step = 30, 1000
    routes = torch.cat([route_samples(torch.arange(per_step), step, seed=7) for step in range(steps)])
    n = steps * per_step
    counts = torch.bincount(routes, minlength=3).tolist()
    sigma = math.sqrt(n * (1 / 3) * (2 / 3))
    assert set(routes.unique().tolist()) == {0, 1, 2}
    assert all(abs(c - n / 3) < 5 * sigma for c in counts), counts
    # the route of a sample at one step says nothing about the next step: 9 cells, chi-square(8) < 40
    a = torch.cat([route_samples(torch.arange(per_step), s, seed=7) for s in range(steps - 1)])
    b = torch.cat([route_samples(torch.arange(per_step), s + 1, seed=7) for s in range(steps - 1)])
    cells = torch.bincount(a * 3 + b, minlength=9).double()
    expected = len(a) / 9
    assert ((cells - expected) ** 2 / expected).sum().item() < 40


def test_routes_are_reproducible_and_depend_only_on_seed_step_and_index():
    rng_before = torch.get_rng_state()
    indices = torch.tensor([5, 17, 3, 40, 41, 2])
    first = route_samples(indices, 12, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)               # no global RNG state read or changed
    torch.manual_seed(123)
    assert torch.equal(route_samples(indices, 12, seed=3), first)       # independent of the global RNG
    # a sample's route does not depend on its batch or its position there (any process split, any order)
    alone = torch.cat([route_samples(indices[i:i + 1], 12, seed=3) for i in range(len(indices))])
    assert torch.equal(alone, first)
    assert torch.equal(route_samples(indices.flip(0), 12, seed=3), first.flip(0))
    many = torch.arange(300)
    assert not torch.equal(route_samples(many, 12, seed=3), route_samples(many, 13, seed=3))
    assert not torch.equal(route_samples(many, 12, seed=3), route_samples(many, 12, seed=4))


# ---------------------------------------------------------------- helpers

def _save_teacher(path, recipe="kd-cls-teacher", backbone="tiny", num_classes=3, seed=0):
    """A teacher checkpoint in the loop's format, with non-trivial weights and context pool."""
    torch.manual_seed(seed)
    model = TEACHER_BUILD.get(recipe, build_kd_cls_teacher)("tiny", num_classes, input_size=16, widths=WIDTHS)
    with torch.no_grad():
        model.context.pool.normal_()
        model.context.projection.weight.normal_()
        model.classifier.weight.mul_(4)
    save_checkpoint({"model": model.state_dict(),
                     "model_spec": {"recipe": recipe, "recipe_module": "camkit.train.kd_recipe", "backbone": backbone,
                                    "num_classes": num_classes,
                                    "model_options": {"input_size": 16, "widths": WIDTHS}}}, path)
    return path


@pytest.fixture
def teachers(tmp_path):
    return (_save_teacher(tmp_path / "cls.pt", "kd-cls-teacher", seed=1),
            _save_teacher(tmp_path / "loc.pt", "kd-loc-teacher", seed=2))


def _student(teachers, **options):
    torch.manual_seed(0)
    return build_kd_student("tiny", 3, input_size=16, widths=WIDTHS, cls_teacher=str(teachers[0]),
                            loc_teacher=str(teachers[1]), **options)


def _ce64(z, y):
    z = z.double()
    return -(z - z.exp().sum(1, keepdim=True).log())[torch.arange(len(y)), y]


def _softmax64(z):
    z = z.double()
    return z.exp() / z.exp().sum(-1, keepdim=True)


def _reference_loss(student, output, images, labels, routes, opts):
    """The student loss from the formula, float64, written without the code under test."""
    alpha, beta = opts.get("alpha", 0.8), opts.get("beta", 1.0)
    t_cls, t_loc = opts.get("cls_temperature", 15.0), opts.get("loc_temperature", 15.0)
    cls_t, loc_t = student.kd_teachers["cls_teacher"], student.kd_teachers["loc_teacher"]
    with torch.no_grad():
        t_logits = cls_t(images)["down"].double()
        t_enh = loc_t(images)["enhanced"].double()
    ce = _ce64(output["down"], labels).mean()
    ld_terms = []
    for i in (routes == 1).nonzero().flatten().tolist():
        q, p = _softmax64(t_logits[i] / t_cls), _softmax64(output["down"][i].double() / t_cls)
        if opts.get("distillation", "kl") == "kl":
            ld_terms.append(t_cls ** 2 * (q * (q.log() - p.log())).sum())
        else:                                         # KLDivLoss(input=p (not log p), target=q), no T^2
            ld_terms.append((q * (q.log() - p)).sum())
    ad_terms = []
    w_s, w_t = student.classifier.weight.double(), loc_t.classifier.weight.double()
    for i in (routes == 2).nonzero().flatten().tolist():
        s_maps = torch.einsum("kc,chw->khw", w_s, output["enhanced"][i].double()).flatten(1) / t_loc
        t_maps = torch.einsum("kc,chw->khw", w_t, t_enh[i]).flatten(1) / t_loc
        if opts.get("activation_norm", "softmax") == "softmax":
            s_maps, t_maps = _softmax64(s_maps), _softmax64(t_maps)
        else:
            s_maps, t_maps = 1 / (1 + (-s_maps).exp()), 1 / (1 + (-t_maps).exp())
        ad_terms.append(((s_maps - t_maps) ** 2).mean())
    ld = torch.stack(ld_terms).mean() if ld_terms else torch.zeros((), dtype=torch.float64)
    ad = torch.stack(ad_terms).mean() if ad_terms else torch.zeros((), dtype=torch.float64)
    return (1 - alpha) * ce + alpha * ld + alpha * beta * ad, ce, ld, ad


# ---------------------------------------------------------------- the loss

@pytest.mark.parametrize("opts", [
    {},
    {"alpha": 0.3, "beta": 2.5, "cls_temperature": 2.0, "loc_temperature": 0.5},
    {"activation_norm": "sigmoid", "loc_temperature": 3.0},
    {"distillation": "released", "cls_temperature": 4.0},
    {"alpha": 1.0, "beta": 0.0},
])
@pytest.mark.parametrize("routes", [[0, 1, 2, 1, 2, 0], [1, 1, 1, 1, 1, 1], [0, 0, 2, 0, 0, 0]])
def test_loss_equals_the_float64_formula_with_fixed_routes(teachers, monkeypatch, opts, routes):
    student = _student(teachers, **opts).train().double()       # float64 end to end: a tight comparison
    for teacher in student.kd_teachers.values():
        teacher.double()
    routes = torch.tensor(routes)
    monkeypatch.setattr(kd_student, "route_samples", lambda indices, step, seed=0: routes)
    g = torch.Generator().manual_seed(5)
    batch = {"image": torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64) * 2,
             "label": torch.tensor([0, 1, 2, 2, 1, 0]), "index": torch.arange(6)}
    output = student(batch["image"], labels=batch["label"])
    state = StepState(epoch=0, step=0, global_step=0, model=student, config=get_recipe("kd-student").config)
    terms = kd_student_loss(output, batch, state)
    want, ce, ld, ad = _reference_loss(student, output, batch["image"], batch["label"], routes, opts)
    assert terms["loss"].dtype == torch.float64
    torch.testing.assert_close(terms["loss"], want.detach(), rtol=1e-10, atol=1e-14)
    for name, value in (("ce", ce), ("ld", ld), ("ad", ad)):
        torch.testing.assert_close(terms[name], value.detach(), rtol=1e-10, atol=1e-14)
    pools = {role: t.context.pool.clone() for role, t in student.kd_teachers.items()}
    terms["loss"].backward()
    grad = student.classifier.weight.grad
    assert grad is not None                              # connected even when the loss is 0 (alpha=1, no cls sample)
    assert grad.abs().sum() > 0 or (opts.get("alpha") == 1.0 and 1 not in routes.tolist())
    for role, teacher in student.kd_teachers.items():
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        assert not teacher.training and torch.equal(teacher.context.pool, pools[role])


def test_loss_normalises_each_route_by_its_count_over_the_global_batch(teachers, monkeypatch):
    """Two halves of a batch, each with normalizer = global batch / 2 and its own route count, sum (over
    the processes) / 2 to the whole batch's loss: what DDP's gradient average needs. Here one process,
    so the route counts are the halves' own; the halves are chosen with equal route counts."""
    student = _student(teachers).eval()
    routes = torch.tensor([1, 2, 0, 1, 2, 0])
    monkeypatch.setattr(kd_student, "route_samples", lambda indices, step, seed=0: routes[indices])
    g = torch.Generator().manual_seed(6)
    images, labels = torch.randn(6, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    config = get_recipe("kd-student").config

    def loss(rows, normalizer):
        batch = {"image": images[rows], "label": labels[rows], "index": rows}
        with torch.no_grad():
            out = student(batch["image"])
        state = StepState(epoch=0, step=0, global_step=0, model=student, config=config, normalizer=normalizer)
        return kd_student_loss(out, batch, state)["loss"]

    whole = loss(torch.arange(6), 6.0)
    halves = loss(torch.arange(3), 3.0) + loss(torch.arange(3, 6), 3.0)
    torch.testing.assert_close(halves / 2, whole, rtol=1e-6, atol=1e-8)


def test_defaults_are_the_released_student_run(teachers):
    student = _student(teachers)
    assert student.kd_options == dict(alpha=0.8, beta=1.0, cls_temperature=15.0, loc_temperature=15.0,
                                      activation_norm="softmax", distillation="kl")
    assert student.context.update_rate == 0.002
    config = get_recipe("kd-student").make_config("cub-vgg16")
    assert (config.optimizer, config.lr, config.batch_size) == ("adam", 5e-4, 6)
    assert get_recipe("kd-student").presets["synthetic-cpu"] == get_recipe("cicam").presets["synthetic-cpu"]
    # the teachers are not part of the student: not in its state_dict, parameters or modules
    assert not any(k.startswith("kd_teachers") for k in student.state_dict())
    teacher_ids = {id(p) for t in student.kd_teachers.values() for p in t.parameters()}
    assert not teacher_ids & {id(p) for p in student.parameters()}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_teachers_on_another_device_are_moved_to_the_batch(teachers, monkeypatch):
    student = _student(teachers).train()                 # teachers loaded on the CPU
    student.to("cuda")                                   # the loop moves the student only
    monkeypatch.setattr(kd_student, "route_samples", lambda indices, step, seed=0: torch.tensor([1, 2, 0, 1]))
    batch = {"image": torch.randn(4, 3, 16, 16, device="cuda"), "label": torch.tensor([0, 1, 2, 1], device="cuda"),
             "index": torch.arange(4, device="cuda")}
    state = StepState(epoch=0, step=0, global_step=0, model=student, config=get_recipe("kd-student").config)
    terms = kd_student_loss(student(batch["image"], labels=batch["label"]), batch, state)
    assert terms["loss"].device.type == "cuda" and terms["ld"] > 0 and terms["ad"] > 0
    for teacher in student.kd_teachers.values():
        assert all(p.device.type == "cuda" for p in teacher.parameters())
        assert teacher.context.pool.device.type == "cuda"


# ---------------------------------------------------------------- bad input

def _bad_teacher(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "nowhere.pt"
    if kind == "not-a-checkpoint":
        (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
        return tmp_path / "junk.pt"
    if kind == "empty-dir":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    recipe, backbone, classes = {"cicam": ("cicam", "tiny", 3), "other-teacher": ("kd-loc-teacher", "tiny", 3),
                                 "backbone": ("kd-cls-teacher", "resnet18", 3),
                                 "classes": ("kd-cls-teacher", "tiny", 4)}[kind]
    return _save_teacher(tmp_path / f"{kind}.pt", recipe, backbone, classes)


@pytest.mark.parametrize("kind,message", [
    ("missing", "--cls-teacher: no file at .*nowhere.pt"),
    ("empty-dir", "--cls-teacher: no file at .*checkpoint.pt"),
    ("not-a-checkpoint", "--cls-teacher: .*junk.pt is not a readable checkpoint"),
    ("cicam", "has recipe 'cicam', it must be the kd-cls-teacher recipe's"),
    ("other-teacher", "has recipe 'kd-loc-teacher', it must be the kd-cls-teacher recipe's"),
    ("backbone", "has backbone 'resnet18', it must be the student's backbone 'tiny'"),
    ("classes", "has num_classes 4, it must be the student's class count 3"),
])
def test_bad_teachers_are_refused_before_anything_is_written(tmp_path, teachers, kind, message):
    from camkit.data.synthetic import make_synthetic
    from camkit.train.loop import train
    bad = _bad_teacher(tmp_path, kind)
    with pytest.raises(ValueError, match=message):
        _student((bad, teachers[1]))
    out = tmp_path / "run"
    config = get_recipe("kd-student").make_config("synthetic-cpu", epochs=1, batch_size=4, resize_size=16,
                                                  crop_size=16, progress=False)
    with pytest.raises(ValueError, match=message):
        train("kd-student", make_synthetic(4, 3, 16, seed=0), backbone="tiny", num_classes=3, config=config,
              out_dir=out, model_options={"widths": WIDTHS, "cls_teacher": str(bad), "loc_teacher": str(teachers[1])})
    assert not out.exists()


def test_the_localization_teacher_is_checked_too(tmp_path, teachers):
    with pytest.raises(ValueError, match="--loc-teacher .* has recipe 'kd-cls-teacher', it must be the kd-loc-teacher"):
        _student((teachers[0], teachers[0]))


@pytest.mark.parametrize("options,message", [
    ({"alpha": -0.1}, r"alpha must be a finite number in \[0.0, 1.0\]"),
    ({"alpha": 1.5}, r"alpha must be a finite number in \[0.0, 1.0\]"),
    ({"alpha": float("nan")}, "alpha must be"),
    ({"alpha": True}, "alpha must be"),
    ({"beta": -1.0}, "beta must be a finite number >= 0"),
    ({"cls_temperature": 0.0}, "cls_temperature must be a finite number > 0"),
    ({"loc_temperature": -2.0}, "loc_temperature must be a finite number > 0"),
    ({"cls_temperature": "15"}, "cls_temperature must be"),
    ({"activation_norm": "exp"}, "activation_norm must be 'softmax'"),
    ({"distillation": "hinton"}, "distillation must be 'kl'"),
])
def test_bad_options_are_refused_when_the_model_is_built(teachers, options, message):
    with pytest.raises(ValueError, match=message):
        _student(teachers, **options)
    with pytest.raises(ValueError, match=message):
        prepare_student_options(dict(options, cls_teacher=str(teachers[0]), loc_teacher=str(teachers[1])))


@pytest.mark.parametrize("missing,flag", [("cls_teacher", "--cls-teacher"), ("loc_teacher", "--loc-teacher")])
def test_a_missing_teacher_option_names_its_flag(teachers, missing, flag):
    options = {"cls_teacher": str(teachers[0]), "loc_teacher": str(teachers[1])}
    del options[missing]
    with pytest.raises(ValueError, match=f"pass {flag} CKPT"):
        build_kd_student("tiny", 3, input_size=16, widths=WIDTHS, **options)


def test_a_given_hash_must_match_its_file(teachers):
    options = prepare_student_options({"cls_teacher": str(teachers[0]), "loc_teacher": str(teachers[1])})
    assert options["cls_teacher_sha256"] == hashlib.sha256(teachers[0].read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="cls.pt has sha256 .* not the 00ff given"):
        prepare_student_options(dict(options, cls_teacher_sha256="00ff"))
    with pytest.raises(ValueError, match="does not have the recorded sha256 00ff"):
        build_kd_student("tiny", 3, input_size=16, widths=WIDTHS, **dict(options, cls_teacher_sha256="00ff"))


@pytest.mark.parametrize("argv,message", [
    (["train", "cam", "--cls-teacher", "x.pt"], "--cls-teacher is for the kd-student recipe only"),
    (["train", "cicam", "--loc-teacher", "x.pt"], "--loc-teacher is for the kd-student recipe only"),
    (["train", "kd-student", "--cls-teacher", "a.pt", "--model-option", "cls_teacher=b.pt"], "name the same teacher"),
    (["train", "kd-student"], "pass --cls-teacher CKPT"),
])
def test_cli_teacher_flags(tmp_path, monkeypatch, capsys, argv, message):
    from camkit import cli
    monkeypatch.chdir(tmp_path)
    code = cli.main(argv + ["--data", "synthetic:num_images=4,image_size=16", "--backbone", "tiny", "--out", "run",
                            "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- end to end

def test_teachers_then_student_then_resume_and_a_changed_teacher_is_refused(tmp_path):
    from camkit.data.synthetic import make_synthetic
    from camkit.train.loop import train
    dataset = make_synthetic(64, 3, 16, seed=0)

    def config(name, steps):
        return get_recipe(name).make_config("synthetic-cpu", epochs=1, batch_size=8, resize_size=16, crop_size=16,
                                            progress=False, eval_every=0, log_every=1, max_steps=steps)
    base = {"widths": WIDTHS, "input_size": 16}
    for name, out in (("kd-cls-teacher", "cls"), ("kd-loc-teacher", "loc")):
        train(name, dataset, backbone="tiny", num_classes=3, config=config(name, 3), out_dir=tmp_path / out,
              model_options=base)
    options = dict(base, cls_teacher=str(tmp_path / "cls" / "checkpoint.pt"), loc_teacher=str(tmp_path / "loc"))

    def student(out, steps):
        return train("kd-student", dataset, backbone="tiny", num_classes=3, config=config("kd-student", steps),
                     out_dir=tmp_path / out, model_options=options)

    straight = student("straight", 5)
    student("resumed", 2)
    resumed = student("resumed", 5)
    for key, value in straight.model.state_dict().items():           # exact resume, routes included
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    records = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records] == [1, 2, 3, 4, 5]
    straight_records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == [r["loss"] for r in straight_records]
    assert any(r["ld"] > 0 for r in records) and any(r["ad"] > 0 for r in records)
    spec = torch.load(resumed.checkpoint, weights_only=True)["model_spec"]
    assert spec["model_options"]["cls_teacher"] == str((tmp_path / "cls" / "checkpoint.pt").resolve())
    assert spec["model_options"]["loc_teacher_sha256"] == hashlib.sha256(
        (tmp_path / "loc" / "checkpoint.pt").read_bytes()).hexdigest()
    # the teachers' pools are their checkpoints' (frozen); the student's own pool was updated
    teacher_pool = load_checkpoint_model(tmp_path / "cls").context.pool
    assert torch.equal(resumed.model.kd_teachers["cls_teacher"].context.pool, teacher_pool)
    assert resumed.model.context.pool.abs().sum() > 0

    # the student rebuilds for inference without its teachers
    (tmp_path / "loc" / "checkpoint.pt").rename(tmp_path / "loc" / "moved.pt")
    reloaded = load_checkpoint_model(resumed.checkpoint)
    assert not hasattr(reloaded, "kd_teachers")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x)["down"], resumed.model.eval()(x)["down"])
    (tmp_path / "loc" / "moved.pt").rename(tmp_path / "loc" / "checkpoint.pt")

    # another classification teacher in the same file: the resume is refused, naming the file; nothing changes
    train("kd-cls-teacher", dataset, backbone="tiny", num_classes=3, config=config("kd-cls-teacher", 4),
          out_dir=tmp_path / "cls", model_options=base)
    before = {p.name: p.read_bytes() for p in (tmp_path / "resumed").iterdir()}
    with pytest.raises(CheckpointError, match=r"kd-cls-teacher checkpoint .*cls/checkpoint.pt \(--cls-teacher\) "
                                              r"has changed"):
        student("resumed", 6)
    assert {p.name: p.read_bytes() for p in (tmp_path / "resumed").iterdir()} == before


# ---------------------------------------------------------------- two processes

def _ddp_student(folder, teachers):
    """The student trained in this process group (one epoch of 19 samples in batches of 6: the last
    global batch has 1 sample, so rank 1 holds none); its parameters and logged terms."""
    from camkit.data.synthetic import make_synthetic
    from camkit.train.loop import train
    config = get_recipe("kd-student").make_config("synthetic-cpu", epochs=1, batch_size=6, resize_size=16,
                                                  crop_size=16, progress=False, eval_every=0, log_every=1)
    result = train("kd-student", make_synthetic(19, 3, 16, seed=4), backbone="tiny", num_classes=3, config=config,
                   out_dir=folder, model_options={"widths": WIDTHS, "input_size": 16, "norm": "none",
                                                  "cls_teacher": str(teachers[0]), "loc_teacher": str(teachers[1])})
    terms = [{k: r[k] for k in ("loss", "ce", "ld", "ad")} for r in result.history if r["event"] == "train"]
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}, terms


@pytest.mark.slow
@pytest.mark.distributed
def test_two_gloo_processes_train_the_student_of_one_process(tmp_path, teachers):
    from two_ranks import on_two_ranks
    ddp_params, ddp_terms = on_two_ranks(_ddp_student, str(tmp_path / "ddp"), teachers)
    params, terms = _ddp_student(str(tmp_path / "one"), teachers)
    for key in params:
        torch.testing.assert_close(ddp_params[key], params[key], rtol=1e-4, atol=1e-5)
    assert len(ddp_terms) == len(terms) == 4
    for ddp_record, record in zip(ddp_terms, terms):      # route means over the global batch, as in one process
        for name in record:
            assert ddp_record[name] == pytest.approx(record[name], rel=1e-5, abs=1e-9), name
    assert any(r["ld"] > 0 for r in terms) and any(r["ad"] > 0 for r in terms)


def test_cli_trains_the_student_from_the_teacher_flags(tmp_path, monkeypatch, capsys, teachers):
    from camkit import cli
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "kd-student", "--cls-teacher", str(teachers[0]), "--loc-teacher", str(teachers[1]),
                     "--data", "synthetic:num_images=8,image_size=16,num_classes=3", "--backbone", "tiny",
                     "--preset", "synthetic-cpu", "--set", "resize_size=16", "--set", "crop_size=16",
                     "--set", "max_steps=1", "--batch-size", "4", "--model-option", "widths=4,8,8,8",
                     "--model-option", "input_size=16", "--out", "run", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    spec = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model_spec"]
    assert spec["recipe"] == "kd-student"
    assert spec["model_options"]["cls_teacher"] == str(teachers[0].resolve())
    assert spec["model_options"]["loc_teacher_sha256"] == hashlib.sha256(teachers[1].read_bytes()).hexdigest()
