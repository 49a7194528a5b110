"""``python -m camkit.cli`` (and ``torchrun -m camkit.cli``): the ``camkit`` command."""
import sys

from camkit.cli import main

sys.exit(main())
