"""Small things a new user trips over (issue 18): output folders git would list, help examples that a
lost line continuation glued into one line."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("camkit/cli/*.py"), *ROOT.glob("examples/*.py"), *ROOT.glob("benchmarks/*.py")])


def out_defaults(source: str):
    """The ``default=`` of every ``add_argument("--out", ...)`` call: a string, or the expression's source."""
    found = []
    for call in ast.walk(ast.parse(source)):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument"
                and call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value == "--out"):
            for keyword in call.keywords:
                if keyword.arg == "default":
                    value = keyword.value
                    found.append(value.value if isinstance(value, ast.Constant) else ast.unparse(value))
    return found


def ignored(relative: str, patterns) -> bool:
    """Whether a root-relative path is under one of ``.gitignore``'s anchored patterns (``/x/``, ``/x``)."""
    first = relative.strip("/").split("/")[0]
    return f"/{first}/" in patterns or f"/{first}" in patterns or f"{first}/" in patterns


def test_out_defaults_and_ignored_read_what_they_should():
    source = 'p.add_argument("--out", default="a/b", help="x")\np.add_argument("--out", default=str(ROOT / "o"))\n' \
             'p.add_argument("--n", default="z")\n'
    assert out_defaults(source) == ["a/b", "str(ROOT / 'o')"]
    assert ignored("outputs/x", {"/outputs/"}) and ignored("quickstart.png", {"/quickstart.png"})
    assert not ignored("camkit-benchmark", {"/camkit-out/"})


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_default_output_folder_is_in_gitignore(script):
    patterns = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    for default in out_defaults(script.read_text()):
        if default.startswith("str(ROOT"):         # ROOT / "outputs" / ... or ROOT / "docs" / ... (committed)
            assert '"outputs"' in default or "'outputs'" in default, default
        else:
            assert ignored(default, patterns), f"{script.name}: --out default {default!r} is not in .gitignore"


def test_cli_examples_keep_their_line_continuations():
    from camkit.cli import COMMANDS, build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and set(a.choices) >= set(COMMANDS))
    glued = [(name, line) for name in COMMANDS for line in (subparsers.choices[name].epilog or "").splitlines()
             if re.search(r"\S {3,}--\w", line)]
    assert glued == [], "a '\\' at a line end inside a normal string joins the lines: write '\\\\'"
