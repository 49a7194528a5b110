"""Every ``python`` code block of README.md and of the docs site runs as written.

The blocks of one page run top to bottom in one namespace (a page reads as one session), in a
temporary folder (blocks may write files). A block needs nothing that it, or a block above it on the
same page, does not define: there is no hidden preamble.
"""
import re
import textwrap
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def python_blocks(text: str):
    """The ``python`` fenced blocks of a Markdown text, dedented, in order: ``[(line, code)]``."""
    return [(text[:match.start()].count("\n") + 1, textwrap.dedent(match.group("body")))
            for match in FENCE.finditer(text)]


def test_python_blocks_finds_fenced_and_indented_blocks_in_order():
    text = "intro\n```python\na = 1\n```\n* item\n  ```python\n  b = a + 1\n  ```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "a = 1\n"), (6, "b = a + 1\n")]


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_of_the_page_runs(page, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for line, code in python_blocks(page.read_text()):
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as error:      # name the block: the traceback's file is "<page>:<line>"
            raise AssertionError(f"the python block at {page.name} line {line} fails: "
                                 f"{type(error).__name__}: {error}") from error


def test_the_readme_has_the_api_tour_and_the_post_hoc_snippet():
    codes = "\n".join(code for _, code in python_blocks((ROOT / "README.md").read_text()))
    assert 'camkit.load_model("efficientnet-lite0")' in codes and "chelsea()" in codes
    assert "fit_context(" in codes
