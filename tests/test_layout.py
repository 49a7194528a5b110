"""The package layout is the data path: every import points down a layer, and there is no circle.

The imports are read with ``ast`` from every module under ``camkit/``, including the ones inside
functions (a lazy import is still a dependency).
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "camkit"

#: lowest first; a module may import modules of its own layer (without a circle) or of lower ones
LAYERS = [
    ["camkit._version", "camkit.constants", "camkit.presets", "camkit.shape_cache", "camkit.distributed",
     "camkit.inputs", "camkit.boxes", "camkit.pixels", "camkit.tokens", "camkit.outputs"],
    ["camkit.layers", "camkit.heads", "camkit.targets", "camkit.dense_targets", "camkit.postprocess", "camkit.methods",
     "camkit.metrics", "camkit.fam_metrics", "camkit.metric_pool", "camkit.viz", "camkit.faithfulness", "camkit.smoothing"],
    ["camkit.capture", "camkit.explanation", "camkit.models"],
    ["camkit.explain", "camkit.data", "camkit.causal", "camkit.fusion"],
    ["camkit.evaluation"],
    ["camkit.train"],
    ["camkit.model_spec"],
    ["camkit.bench"],
    ["camkit.cli"],
    ["camkit", "camkit.__main__"],
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str:
    """The camkit module an imported dotted name refers to (``camkit.boxes.iou_curves`` -> ``camkit.boxes``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str):
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "camkit":
                    yield _resolve(alias.name), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "camkit":
                continue
            for alias in node.names:
                yield _resolve(f"{base}.{alias.name}"), node.lineno


def _layer(module: str) -> int:
    best = max((prefix for layer in LAYERS for prefix in layer
                if module == prefix or (prefix != "camkit" and module.startswith(prefix + "."))), key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


GRAPH = {m: sorted({target for target, _ in _imports(m) if target != m}) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)  # raises StopIteration / ValueError for a module outside LAYERS


def test_no_import_points_up():
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)}) at line {line}"
              for m in MODULES for t, line in _imports(m) if t != m and _layer(t) > _layer(m)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_circle():
    state, circles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for target in GRAPH[module]:
            if state.get(target) == "open":
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_argparse_lives_only_in_the_cli():
    offenders = [m for m, path in MODULES.items() if not (m == "camkit.cli" or m.startswith("camkit.cli."))
                 and any(isinstance(n, (ast.Import, ast.ImportFrom)) and "argparse" in
                         ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""])
                         for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))]
    assert not offenders


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_600_lines(module):
    assert len(MODULES[module].read_text(encoding="utf-8").splitlines()) <= 600


def test_import_camkit_loads_no_training_models_or_data():
    code = ("import sys, camkit; print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['camkit', 'train'], ['camkit', 'models'], ['camkit', 'data'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[]"
