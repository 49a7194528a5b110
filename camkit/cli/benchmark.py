"""Temporary bridge until the bench package lands (replaced by the bench branch)."""
from camkit import benchmark as _b
from camkit.model_spec import add_model_arguments as _add_model

HELP = "quality and cost of every method at every layer: tables, CSV/JSON and plots"
DESCRIPTION = _b.DESCRIPTION
EPILOG = _b.EPILOG


def add_arguments(parser):
    _b.add_arguments(parser)


run = _b.run
