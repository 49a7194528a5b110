"""The method registry: every CAM method is a small pure function registered by name.

A method receives a :class:`LayerInputs` for one layer and returns raw maps ``(B, T, h, w)``, one per
image and target, at layer resolution. Capture, targets, upsampling and normalisation are shared and
live elsewhere. Adding a method is one function::

    from camkit.methods import register, LayerInputs

    @register("my-cam", needs=("gradients",), description="...", reference="...")
    def my_cam(inputs: LayerInputs) -> torch.Tensor:
        weights = inputs.gradients.amax(dim=(-2, -1))            # (B, T, C)
        return torch.einsum("btc,bchw->bthw", weights, inputs.activations)

``needs`` tells the engine what to compute: ``"gradients"`` (one backward), ``"guided_gradients"``
(a second, guided backward of log-scores), ``"head"`` (the classifier weights) and ``"forward"``
(extra forwards of perturbed inputs, through :mod:`camkit.methods.perturbation`) and ``"foreground"``
(the model's own foreground map: FAM's ``fam`` method). ``options`` names
the keys a method reads from ``LayerInputs.options``, so that a misspelt option is refused.
"""
from camkit.methods.registry import (  # noqa: F401
    NAMED_ONLY_NEEDS, NEEDS, STANDARD_METHODS, LayerInputs, Method, channel_weighted_sum, describe_methods, get_method, list_methods,
    register,
)

# Importing the method modules registers them.
from camkit.methods import cam as _cam  # noqa: E402,F401
from camkit.methods import gradient as _gradient  # noqa: E402,F401
from camkit.methods import bagcams as _bagcams  # noqa: E402,F401
from camkit.methods import causal as _causal  # noqa: E402,F401
from camkit.methods import eigen as _eigen  # noqa: E402,F401
from camkit.methods import score as _score  # noqa: E402,F401
from camkit.methods import ablation as _ablation  # noqa: E402,F401
from camkit.methods import smoothgrad as _smoothgrad  # noqa: E402,F401
from camkit.methods import fam as _fam  # noqa: E402,F401

__all__ = ["register", "get_method", "list_methods", "describe_methods", "LayerInputs", "Method",
           "channel_weighted_sum", "STANDARD_METHODS", "NEEDS"]
