"""``python -m camkit``: the ``camkit`` command, as ``python -m camkit.cli`` (and ``torchrun -m camkit``)."""
import sys

from camkit.cli import main

sys.exit(main())
