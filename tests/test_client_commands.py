"""The CLI client's argument parsing, without a server (the commands against a server
process are in test_cli_client.py)."""

from __future__ import annotations

from typing import Any

import pytest

from jobserver.client.commands import build_parser, describe, parse_key_value
from jobserver.client.sdk import ClientError
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
        # Python's json reads these, but they are not JSON: the words themselves
        ("word=NaN", ("word", "NaN")),
        ("word=Infinity", ("word", "Infinity")),
        ("word=-Infinity", ("word", "-Infinity")),
        ("xs=[1, NaN]", ("xs", "[1, NaN]")),
    ],
)
def test_key_value_parses_json_else_keeps_the_string(text: str, expected: tuple[str, Any]) -> None:
    assert parse_key_value(text) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "jobserver.examples.add", "--args", '{"a": NaN, "b": 1}'],
        ["signal", "some-job", "go", "Infinity"],
    ],
)
def test_json_with_nan_or_infinity_is_a_usage_error_naming_the_word(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(argv)
    assert refused.value.code == 2
    assert "is not JSON" in capsys.readouterr().err


def test_an_error_about_the_whole_body_reads_without_an_empty_field_name() -> None:
    too_large = InvalidRequestError(
        "too large: the signal's payload", [{"loc": ["body"], "msg": "70008 bytes, at most 65536"}]
    )
    assert describe(too_large) == "too large: the signal's payload (70008 bytes, at most 65536)"
    bad = InvalidRequestError("invalid args", [{"loc": ["body", "args", "a"], "msg": "Field required"}])
    assert describe(bad) == "invalid args (args.a: Field required)"


def test_an_error_whose_detail_already_says_its_one_field_error_says_it_once() -> None:
    rule = "1 to 255 printable ASCII characters, not starting with 'schedule:'"
    refused = InvalidRequestError(
        f"Idempotency-Key must have {rule}", [{"loc": ["header", "Idempotency-Key"], "msg": rule}]
    )
    assert describe(refused) == f"Idempotency-Key must have {rule}"


def test_a_success_that_is_not_json_is_not_called_an_http_error() -> None:
    foreign = ClientError(200, {}, "the answer is not JSON (text/html): is http://h a jobserver?")
    assert describe(foreign) == "Not JSON (200): the answer is not JSON (text/html): is http://h a jobserver?"
    assert describe(ClientError(502, {}, "bad gateway")) == "HTTP error (502): bad gateway"
