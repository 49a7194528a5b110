"""camkit.evaluate(faithfulness=True, fuse_rules=...) equals the metrics and fusion fed by hand."""

import pytest

import camkit
from camkit.evaluation import evaluate, format_table
from camkit.faithfulness import ROAD, AverageDrop, DeletionInsertion
from camkit.fusion import fuse
from camkit.metrics import MaxBoxAcc
from test_evaluate import TinyNet, ToyWSOL
from untouched import assert_unchanged, snapshot
from two_ranks import on_two_ranks

pytestmark = [pytest.mark.filterwarnings("ignore::camkit.heads.CAMHeadWarning"), pytest.mark.usefixtures("one_thread")]

METHODS, LAYERS = ("gradcam", "pcs"), ("features.1", "features.3")
OPTIONS = {"steps": 3, "percentiles": (25, 75), "batch_size": 7}


def _run(batch_size=4, **options):
    return evaluate(TinyNet(), ToyWSOL(), methods=METHODS, layers=LAYERS, batch_size=batch_size,
                    cam_curve_interval=0.01, progress=False, faithfulness=True, **options)


def test_faithfulness_and_fused_rows_equal_the_metrics_fed_by_hand():
    results = _run(faithfulness_options=OPTIONS, fuse_rules=("max", "layercam"))
    ds, model = ToyWSOL(), TinyNet()
    exp = camkit.explain(model, ds.images, methods=METHODS, layers=LAYERS, target=ds.labels)
    exp = fuse(fuse(exp, rule="max"), rule="layercam")
    assert set(results) == set(exp.maps) and ("pcs", "fused:layercam") in results
    for key, row in results.items():
        maps = exp.maps[key]
        assert row["MaxBoxAccV2"] == MaxBoxAcc(cam_curve_interval=0.01).update(maps, ds.boxes).compute()["MaxBoxAccV2"]
        expected = {}
        for metric in (DeletionInsertion(steps=3, batch_size=7), ROAD(percentiles=(25, 75), batch_size=7),
                       AverageDrop(batch_size=7)):
            metric.update(model, ds.images, maps, ds.labels)
            expected.update(metric.compute())
        assert {k: row[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert "Insertion" in format_table(results)


def test_faithfulness_is_batch_size_invariant_without_noise():
    options = {**OPTIONS, "noise": 0.0}
    one, four = _run(batch_size=1, faithfulness_options=options), _run(batch_size=4, faithfulness_options=options)
    for key in four:
        assert one[key] == pytest.approx(four[key], rel=1e-5, abs=1e-7)   # float32 convs of other batch sizes


@pytest.mark.parametrize("options, fragment", [
    ({"fuse_rules": ("median",)}, "unknown fusion rule(s) ['median']"),
    ({"faithfulness_options": {"steps": 0}}, "steps must be a whole number >= 1"),
    ({"faithfulness_options": {"percentiles": (50, 101)}}, "percentiles must be distinct numbers in (0, 100)"),
])
def test_bad_evaluate_options_are_refused_and_change_nothing(options, fragment):
    model = TinyNet()
    before = snapshot(model)
    with pytest.raises(ValueError) as info:
        evaluate(model, ToyWSOL(), methods="gradcam", layers="features.3", progress=False, faithfulness=True,
                 **options)
    assert fragment in str(info.value)
    assert_unchanged(model, before)


def _run_without_noise():
    return _run(batch_size=2, faithfulness_options={**OPTIONS, "noise": 0.0}, fuse_rules="max")


def test_two_gloo_ranks_equal_one_process():
    sharded = on_two_ranks(_run_without_noise)
    single = _run_without_noise()
    assert set(sharded) == set(single)
    for key in single:
        assert sharded[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7)   # other batches: float32 convs
