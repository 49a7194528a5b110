"""mkdocs hooks: the CLI reference from camkit's argparse parser, and the gallery from examples/.

``<!-- cli-reference -->`` in a page becomes every subcommand's ``--help``; ``<!-- gallery -->`` becomes
one section per ``examples/*.py`` (its docstring, the command, its figures under ``docs/figures/``).
The CLI's parser loads no torch, so the build needs only the ``docs`` extra.
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"quickstart.py": ["quickstart.png"],
           "compare_methods_layers.py": ["methods_layers_maxboxaccv2.png", "methods_layers_example.png"]}


def cli_reference() -> str:
    sys.path.insert(0, str(ROOT))
    from camkit.cli import COMMANDS, build_parser

    parser = build_parser()
    subparsers = next(action for action in parser._actions if action.choices and set(action.choices) >= set(COMMANDS))
    parts = ["## camkit", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name in COMMANDS:
        parts += [f"## camkit {name}", "", "```text", subparsers.choices[name].format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def gallery() -> str:
    parts = []
    for script in sorted((ROOT / "examples").glob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        summary, _, rest = doc.partition("\n\n")
        parts += [f"## {script.name}", "", summary, "", "```bash", f"python examples/{script.name}", "```", ""]
        parts += [f"![{figure}](figures/{figure})" for figure in FIGURES.get(script.name, [])]
        parts += ["", "```text", rest.strip(), "```", ""] if rest.strip() else [""]
    return "\n".join(parts)


def on_page_markdown(markdown, page, config, files):
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    if "<!-- gallery -->" in markdown:
        markdown = markdown.replace("<!-- gallery -->", gallery())
    return markdown
