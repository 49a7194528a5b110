"""Every flag of every example and benchmark script says what it does (``help=``)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("examples/*.py"), *ROOT.glob("benchmarks/*.py")])


def flags_without_help(source: str):
    """The first argument of every ``*.add_argument(...)`` call that has no ``help=`` keyword."""
    return [call.args[0].value if call.args and isinstance(call.args[0], ast.Constant) else ast.unparse(call)
            for call in ast.walk(ast.parse(source))
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and call.func.attr == "add_argument" and not any(k.arg == "help" for k in call.keywords)]


def test_flags_without_help_finds_the_missing_ones():
    source = "p.add_argument('--a', help='x')\np.add_argument('--b', type=int)\nq.add_argument('c')\n"
    assert flags_without_help(source) == ["--b", "c"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_has_help(script):
    assert flags_without_help(script.read_text()) == []
