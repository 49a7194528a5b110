"""camkit: class activation maps for any PyTorch classifier.

The entry point is :func:`camkit.explain`; :class:`camkit.Explainer` is its reusable form.
"""

__version__ = "0.1.0"
