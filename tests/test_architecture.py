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


def test_tests_sharing_an_expensive_fixture_run_on_one_pytest_worker(tmp_path):
    """`make test` groups the tests of a shared fixture (a smoke study, a trained model) on one
    pytest-xdist worker, so the fixture is built once; a pytest or xdist release that breaks
    `--dist loadgroup` (pytest-dev/pytest-xdist#1386) would silently build it twice."""
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_grouped.py").write_text(
        "import os, pytest\n"
        "@pytest.fixture(scope='session')\ndef model_file():\n    return 1\n"
        + "".join(f"def test_{i}(model_file):\n    open('workers.txt', 'a').write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
                  for i in range(6))
        + "".join(f"def test_alone_{i}():\n    pass\n" for i in range(6)))
    done = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:randomly",
                           "-p", "no:cacheprovider", "-q", "test_grouped.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    workers = (tmp_path / "workers.txt").read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1, workers
