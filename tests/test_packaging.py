"""The distribution as a user gets it: an sdist and a wheel built from it (`python -m build`,
the project's own backend, no network), the wheel installed in a fresh venv that has only the
dependencies besides it, and the installed `jobserver` command answering `--version` with the
version pyproject.toml gives."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.e2e


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_sdist_and_wheel_build_and_install_in_a_fresh_venv(tmp_path: Path) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    dist = tmp_path / "dist"
    # the sdist first, then the wheel built from the unpacked sdist: a file the sdist lacks fails here
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, REPO)
    sdist, wheel = dist / f"jobserver-{version}.tar.gz", dist / f"jobserver-{version}-py3-none-any.whl"
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "tests/e2e_tasks.py"} <= names
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
        metadata = whl.read(f"jobserver-{version}.dist-info/METADATA").decode()
    assert {"jobserver/http/static/index.html", "jobserver/py.typed"} <= files
    assert not any(f.startswith("tests/") for f in files)
    for line in ("License-Expression: MIT", "Requires-Python: >=3.11", "Provides-Extra: otel"):
        assert line in metadata
    assert "Classifier: Programming Language :: Python :: 3.11" in metadata

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # the dependencies come from this environment's site-packages, the package only from the wheel
    purelib = Path(sysconfig.get_paths()["purelib"])
    fresh_purelib = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    (fresh_purelib / "deps.pth").write_text(f"{purelib}\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    probe = "import jobserver; print(jobserver.__file__, jobserver.__version__)"
    where = run(python, "-c", probe, cwd=tmp_path).split()  # not from the source tree
    assert Path(where[0]).is_relative_to(venv) and where[1] == version
    assert run(venv / "bin" / "jobserver", "--version", cwd=tmp_path).strip() == f"jobserver {version}"
    assert run(python, "-m", "jobserver", "--version", cwd=tmp_path).strip() == f"jobserver {version}"


def test_the_readmes_dockerfile_for_your_tasks_is_the_example_file() -> None:
    """The README shows examples/docker/Dockerfile inline; a copy that drifted would build an image
    other than the one the example's smoke test checks."""
    readme = (REPO / "README.md").read_text()
    shown = readme.split("```dockerfile\n", 1)[1].split("```", 1)[0]
    shown_lines = [line.removeprefix("  ") for line in shown.splitlines()]
    example = (REPO / "examples/docker/Dockerfile").read_text().splitlines()
    example_lines = [line for line in example if not line.startswith("#")]
    assert [x for x in shown_lines if x.strip()] == [x for x in example_lines if x.strip()]
