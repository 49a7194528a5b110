"""``camkit --help`` loads no torch: the package face and the command line import it only inside commands."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("code", [
    "import camkit",
    "import camkit.cli; camkit.cli.build_parser()",
    "import camkit.cli; camkit.cli.build_parser().parse_args(['explain', 'x.jpg', '--model', 'efficientnet-lite0'])",
])
def test_no_torch_until_a_command_runs(code):
    check = f"{code}\nimport sys\nloaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n" \
            f"assert not loaded, loaded[:5]"
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True)


def test_the_face_still_gives_every_public_name():
    import camkit
    for name in camkit.__all__:
        assert getattr(camkit, name) is not None, name
    assert callable(camkit.explain) and camkit.list_methods()


def test_camkit_explain_stays_the_function_after_its_module_is_imported():
    code = ("import camkit.explain, camkit\nfrom camkit.explain import Explainer\n"
            "assert callable(camkit.explain) and camkit.explain.__module__ == 'camkit.explain', camkit.explain")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("module", ["camkit", "camkit.cli"])
def test_python_dash_m_runs_the_camkit_command_without_torch(module):
    """``python -m camkit --help`` is the ``camkit`` command's help, and imports no torch."""
    code = (f"import runpy, sys; sys.argv = ['camkit', '--help']\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__')\nexcept SystemExit as done:\n"
            f"    assert done.code in (0, None), done.code\n"
            f"assert 'torch' not in sys.modules, 'torch imported for --help'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: camkit")
