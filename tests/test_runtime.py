"""How serving sizes itself to the process: the open-files limit and the connection cap under it."""

from __future__ import annotations

import resource

import pytest

from jobserver.runtime import connection_cap, raise_open_files_limit


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here: nothing to raise the soft one to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        assert raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_connection_cap_keeps_files_free_for_everything_else() -> None:
    assert connection_cap(1000, 1_048_576) == 1000
    assert connection_cap(1000, 1024) == 768  # a quarter of the files stay free
    assert connection_cap(1000, 256) == 192  # at least 64 stay free
    assert connection_cap(50, 1024) == 50
    assert connection_cap(1000, 40) == 1
    assert connection_cap(1000, resource.RLIM_INFINITY) == 1000
