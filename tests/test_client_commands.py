"""The CLI client's argument parsing, without a server (the commands against a server
process are in test_cli_client.py)."""

from __future__ import annotations

from typing import Any

import pytest

from jobserver.client.commands import describe, parse_key_value
from jobserver.core.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n=3", ("n", 3)),
        ("xs=[1, 2]", ("xs", [1, 2])),
        ("flag=true", ("flag", True)),
        ('s="7"', ("s", "7")),
        ("s=hello world", ("s", "hello world")),
        ("eq=a=b", ("eq", "a=b")),
        ("empty=", ("empty", "")),
    ],
)
def test_key_value_parses_json_else_keeps_the_string(text: str, expected: tuple[str, Any]) -> None:
    assert parse_key_value(text) == expected


def test_an_error_about_the_whole_body_reads_without_an_empty_field_name() -> None:
    too_large = InvalidRequestError(
        "too large: the signal's payload", [{"loc": ["body"], "msg": "70008 bytes, at most 65536"}]
    )
    assert describe(too_large) == "too large: the signal's payload (70008 bytes, at most 65536)"
    bad = InvalidRequestError("invalid args", [{"loc": ["body", "args", "a"], "msg": "Field required"}])
    assert describe(bad) == "invalid args (args.a: Field required)"
