"""The code's shape, checked: imports point one way (import-linter, the contracts in pyproject.toml),
and every module stays small enough to hold in one's head."""

import subprocess

from conftest import REPO

MAX_MODULE_LINES = 350
MAX_DRIVER_LINES = 100  # mnist_lab/sweep/__init__.py: check the request, pick the engine


def test_imports_point_one_way():
    done = subprocess.run([str(REPO / ".venv" / "bin" / "lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_module_outgrows_one_reading():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / "mnist_lab").rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}
    assert sizes["mnist_lab/sweep/__init__.py"] <= MAX_DRIVER_LINES
