"""The package's version, read once from its installed metadata (pyproject.toml is the one place
it is written)."""

from __future__ import annotations

from functools import cache

DISTRIBUTION = "jobserver"


@cache
def package_version() -> str:
    """The installed distribution's version; "0+unknown" for a source tree never installed.
    (importlib.metadata is imported here: it costs every command's start-up a twentieth of a
    second, and most never ask for the version.)"""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
