"""Per-call forward hooks that capture layer outputs and, on request, guide the backward pass.

:class:`ActivationCapture` is a context manager: hooks exist only inside the ``with`` block and are
removed in ``finally``, so nothing stays attached to the user's model.

How a capture works, per captured module call:

* The output ``out`` becomes the captured activation ``A``. If ``out`` carries no autograd history
  (frozen parameters, or the upstream forward ran without a graph) ``A`` is a detached leaf that
  requires grad, so gradients to it always exist.
* The hook returns ``A.clone()`` to the rest of the forward. An in-place operation after the layer
  (``nn.ReLU(inplace=True)``) therefore modifies the clone, never ``A``: the captured values and
  the gradient ``dS/dA`` are those of the layer's own output.
* With ``start_graph_at_capture`` the forward runs without autograd until the first captured call,
  and with it from there on. Nothing upstream of the layers is recorded, which saves the memory and
  time of a graph that the gradients to the layers never use.

Guided backward (BagCAMs): every call of a guided module type (``nn.ReLU``, ``nn.ReLU6``) gets a
tensor hook on its output that, while :attr:`ActivationCapture.guided` is true, clamps the incoming
gradient to ``>= 0``. ReLU's own backward then applies its mask, so the result is guided
backpropagation. One backward to all captured layers is guided, for each layer, exactly through
the ReLUs downstream of it: nodes upstream of a layer do not affect the gradient to it. When a
ReLU call is itself a captured layer, ``A`` is a view taken after the clamp point, so ``dS/dA`` is
not clamped by that ReLU while the gradient passing through it to earlier layers is.

No reference cycle through autograd: the tensor hooks live in the autograd graph (C++), which the
garbage collector cannot traverse, so they hold only a small :class:`GuidedClamp` switch, never the
capture, and ``__exit__`` removes them and drops the captured tensors. The graph of one call is then
freed as soon as the caller drops its tensors.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from camkit.layers import LayerError, LayerSpec

DEFAULT_GUIDED_MODULES: Tuple[Type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


class CallCountChanged(LayerError):
    """A module ran a different number of times than ``call_totals`` said (data-dependent forward)."""


class GuidedClamp:
    """The guided-backward step at a ReLU's output: while :attr:`enabled`, keep only positive gradient.

    A tensor hook on each guided ReLU output calls it; it holds no tensor and no capture, so the
    autograd graph that holds it references nothing back.
    """

    def __init__(self):
        self.enabled = False
        self.clamps = 0           # clamps applied during backwards (0: nothing was guided)

    def __call__(self, grad: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.enabled:
            return None
        self.clamps += 1
        return grad.clamp(min=0)


class ActivationCapture:
    """Capture the outputs of ``specs`` during one forward.

    Args:
        model: the model whose submodules are hooked.
        specs: the capture points.
        guided_modules: module types whose outputs get the guided-backward hook, or ``None`` for none.
        start_graph_at_capture: run the forward without autograd until the first captured call.
        call_totals: ``{module: calls per forward}`` from an earlier forward of the same input shape
            (:attr:`call_totals`). With it a negative call index (the default ``-1``: the last call)
            is known during the forward, so only that call is captured and autograd starts there.
            Without it every call of such a module is a candidate and autograd starts at its first
            call (e.g. EfficientNet-Lite0's stem ReLU6, which is reused for the head).
    """

    def __init__(self, model: nn.Module, specs: Sequence[LayerSpec],
                 guided_modules: Optional[Tuple[Type[nn.Module], ...]] = None,
                 start_graph_at_capture: bool = True,
                 call_totals: Optional[Dict[nn.Module, int]] = None):
        self.model = model
        self.specs = list(specs)
        self.guided_modules = tuple(guided_modules or ())
        self.start_graph_at_capture = start_graph_at_capture
        self._clamp = GuidedClamp()
        self._totals = dict(call_totals or {})
        self._wanted: Dict[nn.Module, List[int]] = defaultdict(list)
        for spec in self.specs:
            self._wanted[spec.module].append(spec.call)
        self._calls: Dict[nn.Module, int] = defaultdict(int)
        self._captured: Dict[Tuple[nn.Module, int], torch.Tensor] = {}
        self._handles = []            # module forward hooks and guided tensor hooks
        self._grad_mode = None

    @property
    def guided(self) -> bool:
        """Whether the guided ReLU hooks clamp the gradient (set before the guided backward)."""
        return self._clamp.enabled

    @guided.setter
    def guided(self, enabled: bool) -> None:
        self._clamp.enabled = bool(enabled)

    @property
    def guided_clamps(self) -> int:
        """Guided clamps applied during backwards so far (0: nothing was guided)."""
        return self._clamp.clamps

    # -- context management -------------------------------------------------------------------
    def __enter__(self) -> "ActivationCapture":
        self._grad_mode = torch.is_grad_enabled()
        hooked = set()
        try:
            for module in list(self._wanted):
                self._handles.append(module.register_forward_hook(self._on_forward))
                hooked.add(module)
            if self.guided_modules:
                for module in self.model.modules():
                    if isinstance(module, self.guided_modules) and module not in hooked:
                        self._handles.append(module.register_forward_hook(self._on_forward))
                        hooked.add(module)
        except BaseException:
            self._remove()
            raise
        if self.start_graph_at_capture:
            torch.set_grad_enabled(False)
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        """Remove every hook and drop the captured tensors (read them with :meth:`activation` inside
        the ``with`` block)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._captured.clear()
        if self._grad_mode is not None:
            torch.set_grad_enabled(self._grad_mode)

    def end_forward(self) -> None:
        """Restore the caller's grad mode after the forward (hooks stay until ``__exit__``)."""
        torch.set_grad_enabled(self._grad_mode)

    # -- the hook -----------------------------------------------------------------------------
    @property
    def call_totals(self) -> Dict[nn.Module, int]:
        """Calls per captured module in this forward, for the next capture of the same input shape."""
        return {module: self._calls[module] for module in self._wanted}

    def _is_captured_call(self, module: nn.Module, call: int) -> bool:
        total = self._totals.get(module)
        for wanted in self._wanted.get(module, ()):
            if wanted == call or (wanted < 0 and (total is None or total + wanted == call)):
                return True
        return False

    def _on_forward(self, module, inputs, output):
        call = self._calls[module]
        self._calls[module] = call + 1
        result = None
        if self._is_captured_call(module, call):
            if not isinstance(output, torch.Tensor):
                raise LayerError(f"layer {self._name(module)} returns a {type(output).__name__}, not a "
                                 f"tensor; pick a submodule whose output is a (B, C, h, w) tensor")
            if self.start_graph_at_capture:
                torch.set_grad_enabled(True)
            guided_call = isinstance(module, self.guided_modules)
            if not output.requires_grad:
                activation = output.detach().requires_grad_(True)
            elif guided_call:
                # A separate node after the clamp point: dS/dA arrives unclamped, while the gradient
                # passing on through this ReLU to earlier layers is clamped on ``output`` below.
                activation = output.view_as(output)
            else:
                activation = output
            self._captured[(module, call)] = activation
            result = activation.clone()
        if (self.guided_modules and isinstance(module, self.guided_modules)
                and isinstance(output, torch.Tensor) and output.requires_grad):
            self._handles.append(output.register_hook(self._clamp))
        return result

    def _name(self, module: nn.Module) -> str:
        for spec in self.specs:
            if spec.module is module:
                return repr(spec.name)
        return type(module).__name__

    # -- results ------------------------------------------------------------------------------
    def activation(self, spec: LayerSpec) -> torch.Tensor:
        """The captured output of ``spec``, as the layer returned it (the engine reads it as a map
        with :func:`camkit.tokens.as_method_inputs`)."""
        total = self._calls.get(spec.module, 0)
        if total == 0:
            raise LayerError(f"layer {spec.name!r} did not run during the forward pass; pick a layer "
                             f"on the path from the input to the logits")
        call = spec.call if spec.call >= 0 else total + spec.call
        if not 0 <= call < total:
            raise LayerError(f"layer {spec.name!r} ran {total} time(s) in the forward pass, so call "
                             f"index {spec.call} is out of range")
        if (spec.module, call) not in self._captured:
            raise CallCountChanged(f"layer {spec.name!r} ran {total} time(s), not "
                                   f"{self._totals.get(spec.module)} as in the previous forward")
        activation = self._captured[(spec.module, call)]
        return activation
