"""The package's version, read once from its installed metadata (pyproject.toml is the one place
it is written)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "jobserver"


@cache
def package_version() -> str:
    """The installed distribution's version; "0+unknown" for a source tree never installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
