"""The package type-checks strictly (settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_mypy_strict_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
