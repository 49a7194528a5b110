"""Repeated calls leave nothing behind: no live ActivationCapture, no tensor, no growing cache.

Issue 11: the guided (BagCAMs) tensor hooks used to hold the capture from inside the autograd graph,
a reference cycle through C++ that ``gc`` cannot break, so every call with BagCAMs at two or more
layers kept its capture and its whole graph alive. The counts here are taken after ``gc.collect()``
over 50 calls (the short form of ``benchmarks/bench_soak.py``).
"""
import gc
import warnings
import weakref

import pytest
import torch
from torch import nn

import camkit
from camkit.capture import ActivationCapture
from camkit.explain import SHAPE_CACHE_SIZE, ShapeCache, _shape_key

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::camkit.CAMHeadWarning"),
              pytest.mark.filterwarnings("ignore:.*target logit.*:RuntimeWarning")]

CALLS = 50


class TinyCNN(nn.Module):
    """block3 (conv-ReLU, 4 ch) -> act (a ReLU reused twice) -> block4 (conv-ReLU in place, 6 ch) -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block3 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.block4 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.act(self.mid(self.act(self.block3(x))))
        return self.fc(self.block4(x).mean(dim=(2, 3)))


def _live():
    """``(ActivationCapture, torch.Tensor)`` objects alive after a full collection."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # isinstance on torch.distributed's deprecated aliases
        objects = gc.get_objects()
        return (sum(isinstance(o, ActivationCapture) for o in objects),
                sum(isinstance(o, torch.Tensor) for o in objects))


def _soak(call, calls=CALLS):
    """Live objects before and after ``calls`` calls (one warm-up call first)."""
    call()
    before = _live()
    for _ in range(calls):
        call()
    return before, _live()


@pytest.mark.parametrize("methods, layers", [
    ("bagcams", ("block3", "block4")),                                   # the reported case
    (None, ("block3", "act@0", "act", "block4")),                        # every method, reused module
    (("gradcam", "bagcams"), ("block3",)),
    ("gradcam++", ("block3", "block4")),
])
def test_repeated_calls_leave_no_capture_or_tensor_alive(methods, layers):
    model = TinyCNN().eval()
    explainer = camkit.Explainer(model, methods=methods, layers=layers)
    x = torch.randn(2, 3, 12, 12)
    before, after = _soak(lambda: explainer(x, target=camkit.TopK(2)))
    assert after[0] <= before[0], f"live ActivationCapture objects grew from {before[0]} to {after[0]} over {CALLS} calls"
    assert after[1] <= before[1], f"live tensors grew from {before[1]} to {after[1]} over {CALLS} calls"


def test_calls_that_fail_after_the_forward_leave_nothing_alive():
    model = TinyCNN().eval()
    explainer = camkit.Explainer(model, methods=("gradcam", "bagcams"), layers=("block3", "block4"))
    x = torch.randn(2, 3, 12, 12)

    def failing():
        with pytest.raises(IndexError):
            explainer(x, target=99)      # out of range: raised after the forward, inside the capture
        with pytest.raises(ZeroDivisionError):
            explainer(x, target=lambda logits: 1 / 0)

    before, after = _soak(failing, calls=20)
    assert after[0] <= before[0], f"live ActivationCapture objects grew from {before[0]} to {after[0]}"
    assert after[1] <= before[1], f"live tensors grew from {before[1]} to {after[1]}"


def test_no_module_output_or_graph_outlives_the_call():
    """Every module output of the call (and so its autograd node, which the output owns) is freed
    once the caller drops the explanation: weak references to all of them are dead after gc."""
    model = TinyCNN().eval()
    outputs = []
    handles = [module.register_forward_hook(lambda m, i, out: outputs.append(weakref.ref(out)))
               for module in model.modules()]
    try:
        for methods, layers in ((None, ("block3", "act@0", "act", "block4")), ("bagcams", ("block3", "block4"))):
            camkit.explain(model, torch.randn(2, 3, 12, 12), methods=methods, layers=layers, target=camkit.TopK(2))
    finally:
        for handle in handles:
            handle.remove()
    gc.collect()
    alive = [ref() for ref in outputs if ref() is not None]
    assert not alive, f"{len(alive)} of {len(outputs)} module outputs are still alive: {[tuple(t.shape) for t in alive]}"


def _cyclic_garbage(call):
    """The objects that only the cycle collector would free after ``call()`` (gc disabled meanwhile)."""
    gc.collect()
    gc.disable()
    try:
        call()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("methods", [None, ("cam", "gradcam"), ("gradcam", "bagcams")])
def test_a_call_leaves_no_tensor_to_the_cycle_collector(methods):
    """Tensors must be freed when the call returns, not at the next full collection: a CAM skipped at
    ``block3`` used to keep its HeadNotFoundError, whose traceback frames held every tensor of the
    call (about 20 MiB per evaluate run at 64x64, freed only by gc)."""
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 12, 12)
    garbage = _cyclic_garbage(lambda: camkit.explain(model, x, methods=methods, layers=("block3", "block4")))
    tensors = [tuple(o.shape) for o in garbage if isinstance(o, torch.Tensor)]
    assert not tensors, f"{len(tensors)} tensors of the call wait for the cycle collector: {tensors[:8]}"


def test_the_per_shape_cache_keeps_only_recent_shapes():
    """layers=None probes each new input shape; 40 shapes must not leave 40 entries."""
    model = TinyCNN().eval()
    explainer = camkit.Explainer(model, methods="gradcam")
    first = torch.randn(1, 3, 8, 8)
    for size in range(9, 49):
        explainer(first)                                  # the first shape stays in use
        explainer(torch.randn(1, 3, size, size))
    assert len(explainer._auto_layer) <= SHAPE_CACHE_SIZE
    assert len(explainer._call_totals) <= SHAPE_CACHE_SIZE
    assert explainer._auto_layer.get(_shape_key(first)) is not None


def test_shape_cache_evicts_the_least_recently_used():
    cache = ShapeCache(2)
    cache["a"], cache["b"] = 1, 2
    assert cache.get("a") == 1                            # "a" is now the most recent
    cache["c"] = 3
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)
