"""Tests of jobserver.core.config: defaults, file, environment, overrides, validation."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict, Unpack

import pytest
from pydantic import ValidationError

from jobserver.core.config import Settings, load_settings, parse_duration
from jobserver.core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


class LoadArgs(TypedDict, total=False):
    """The arguments of `load_settings` a test may give (`cwd` is the test's directory)."""

    config_path: str | os.PathLike[str] | None
    environ: Mapping[str, str] | None
    overrides: Mapping[str, Any] | None


def load(tmp_path: Path, **kwargs: Unpack[LoadArgs]) -> Settings:
    kwargs.setdefault("environ", {})
    return load_settings(cwd=tmp_path, **kwargs)


def config_error(tmp_path: Path, **kwargs: Unpack[LoadArgs]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **kwargs)
    return info.value


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.server.max_body_bytes == 1_048_576
    assert settings.server.max_args_bytes == 65_536
    assert settings.database.synchronous == "normal"
    assert settings.database.busy_timeout == 5.0
    assert settings.workers.threads == 4
    assert settings.workers.async_concurrency == 100
    assert settings.workers.lease_seconds == 30.0
    assert settings.workers.poll_interval == 1.0
    assert settings.tasks.modules == ("jobserver.examples",)
    assert settings.auth.api_keys == ()
    assert settings.webhooks.secret == ""
    assert settings.webhooks.allow_private is False
    assert settings.webhooks.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000, 72000, 86400)
    # the contract: failed deliveries are retried over about three days
    assert 2.9 * 86400 <= sum(settings.webhooks.retry_schedule) <= 3.1 * 86400
    assert settings.webhooks.timeout == 10.0
    assert settings.retention.finished_jobs == 7 * 86400
    assert settings.retention.idempotency_keys == 86400
    assert settings.retention.interval == 60
    assert settings.retention.batch_size == 500
    assert settings.events.max_log_lines == 1000
    assert settings.events.progress_flush_interval == pytest.approx(0.1)
    assert settings.sqlite_path() == tmp_path / "data" / "jobserver.db"
    assert not settings.is_postgres


def test_config_toml_in_cwd_is_picked_up(tmp_path: Path) -> None:
    write(tmp_path, "[server]\nport = 8123\n")
    assert load(tmp_path).server.port == 8123


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        host = "0.0.0.0"
        log_level = "DEBUG"
        [workers]
        threads = 8
        lease_seconds = "2m"
        [auth]
        api_keys = ["a", "b"]
        [webhooks]
        allow_private = true
        retry_schedule = [1, "2s", "500ms"]
        """,
        name="other.toml",
    )
    settings = load(tmp_path, config_path=path)
    assert settings.server.host == "0.0.0.0"
    assert settings.server.log_level == "debug"
    assert settings.server.port == 8000
    assert settings.workers.threads == 8
    assert settings.workers.lease_seconds == 120.0
    assert settings.auth.api_keys == ("a", "b")
    assert settings.webhooks.allow_private is True
    assert settings.webhooks.retry_schedule == (1.0, 2.0, 0.5)


def test_relative_config_path_is_relative_to_cwd(tmp_path: Path) -> None:
    write(tmp_path, "[server]\nport = 9001\n", name="custom.toml")
    assert load(tmp_path, config_path="custom.toml").server.port == 9001


def test_missing_config_path_is_an_error(tmp_path: Path) -> None:
    error = config_error(tmp_path, config_path=tmp_path / "nope.toml")
    assert error.key == str(tmp_path / "nope.toml")


def test_a_config_toml_that_is_no_file_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    """`docker run -v ./config.toml:/app/config.toml` with no such file on the host mounts a
    directory; a link may point at nothing. Neither starts on the defaults (no API keys)."""
    default = tmp_path / "config.toml"
    default.mkdir()
    error = config_error(tmp_path)
    assert error.key == str(default)
    assert "is a directory" in str(error)
    assert "is a directory" in str(config_error(tmp_path, config_path=default))
    default.rmdir()
    default.symlink_to(tmp_path / "mounted" / "config.toml")
    assert "a link to nothing" in str(config_error(tmp_path))
    (tmp_path / "mounted").mkdir()
    write(tmp_path / "mounted", "[server]\nport = 9002\n")
    assert load(tmp_path).server.port == 9002


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = \n")
    error = config_error(tmp_path, config_path=path)
    assert error.key == str(path)
    assert "TOML" in str(error)


def test_a_number_written_as_a_string_in_the_file_is_refused_but_taken_from_the_environment(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, '[workers]\nthreads = "4"\n[server]\nmax_connections = "50"\n')
    err = config_error(tmp_path, config_path=path)
    assert err.key == "server.max_connections"
    assert "must be a number, not the string '50'" in str(err) and "workers.threads" in str(err)
    path = write(tmp_path, '[workers]\nthreads = 4\nlease_seconds = "2m"\n')  # a duration reads text
    settings = load(tmp_path, config_path=path, environ={"JOBSERVER_SERVER_MAX_CONNECTIONS": "50"})
    assert (settings.workers.threads, settings.workers.lease_seconds) == (4, 120.0)
    assert settings.server.max_connections == 50


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 8100\nhost = "0.0.0.0"\n[workers]\nthreads = 2\n')
    environ = {
        "JOBSERVER_SERVER_PORT": "8200",
        "JOBSERVER_WORKERS_LEASE_SECONDS": "45",
        "jobserver_database_url": "sqlite:////tmp/env.db",
        "JOBSERVER_Webhooks_Allow_Private": "yes",
    }
    settings = load(tmp_path, config_path=path, environ=environ)
    assert settings.server.port == 8200
    assert settings.server.host == "0.0.0.0"
    assert settings.workers.threads == 2
    assert settings.workers.lease_seconds == 45.0
    assert settings.database.url == "sqlite:////tmp/env.db"
    assert settings.webhooks.allow_private is True


def test_every_bad_value_is_named_at_once(tmp_path: Path) -> None:
    environ = {"JOBSERVER_WORKERS_THREADS": "abc", "JOBSERVER_WORKERS_LEASE_SECONDS": "xyz"}
    error = config_error(tmp_path, environ=environ)
    message = str(error)
    assert error.key == "workers.threads"
    assert "(from environment variable JOBSERVER_WORKERS_THREADS)" in message
    assert "; also workers.lease_seconds: " in message and "JOBSERVER_WORKERS_LEASE_SECONDS)" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("no", False)],
)
def test_environment_booleans(tmp_path: Path, raw: str, expected: bool) -> None:
    settings = load(tmp_path, environ={"JOBSERVER_WEBHOOKS_ALLOW_PRIVATE": raw})
    assert settings.webhooks.allow_private is expected


def test_overrides_beat_environment(tmp_path: Path) -> None:
    write(tmp_path, "[server]\nport = 8100\n")
    settings = load(
        tmp_path,
        environ={"JOBSERVER_SERVER_PORT": "8200", "JOBSERVER_SERVER_HOST": "0.0.0.0"},
        overrides={"server.port": 9000, "server.host": None},
    )
    assert settings.server.port == 9000
    assert settings.server.host == "0.0.0.0"


def test_unknown_override_key_is_an_error(tmp_path: Path) -> None:
    assert config_error(tmp_path, overrides={"server.nope": 1}).key == "server.nope"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('["k1","k2"]', ("k1", "k2")),
        (' [ "k,1" ] ', ("k,1",)),
        ("k1,k2", ("k1", "k2")),
        (" k1 , k2 ", ("k1", "k2")),
        ("k1", ("k1",)),
    ],
)
def test_environment_lists(tmp_path: Path, raw: str, expected: tuple[str, ...]) -> None:
    settings = load(tmp_path, environ={"JOBSERVER_AUTH_API_KEYS": raw})
    assert settings.auth.api_keys == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(" a , b ,", ("a", "b")), ("", ()), ("[]", ()), (" ", ())],
)
def test_environment_lists_other_than_api_keys_may_be_empty(
    tmp_path: Path, raw: str, expected: tuple[str, ...]
) -> None:
    settings = load(tmp_path, environ={"JOBSERVER_WEBHOOKS_ALLOW_HOSTS": raw})
    assert settings.webhooks.allow_hosts == expected


@pytest.mark.parametrize("raw", ["", " ", ",", "[]", " [ ] ", '[""]', '["k1", " "]', "k1,,k2", "k1,", ", k1"])
def test_api_keys_set_but_empty_or_blank_in_environment_are_refused(tmp_path: Path, raw: str) -> None:
    """Auth never fails open: a key list that is set must hold keys, and no blank one."""
    error = config_error(tmp_path, environ={"JOBSERVER_AUTH_API_KEYS": raw})
    assert error.key == "auth.api_keys"
    assert "JOBSERVER_AUTH_API_KEYS" in str(error)


@pytest.mark.parametrize("keys", ['[""]', '["k1", "  "]'])
def test_blank_api_key_in_file_is_refused(tmp_path: Path, keys: str) -> None:
    path = write(tmp_path, f"[auth]\napi_keys = {keys}\n")
    error = config_error(tmp_path, config_path=path)
    assert error.key == "auth.api_keys"
    assert str(path) in str(error)


def test_absent_or_empty_api_keys_in_file_mean_open(tmp_path: Path) -> None:
    """`api_keys = []` is the documented default of config.toml: auth off."""
    assert load(tmp_path, config_path=write(tmp_path, "[auth]\napi_keys = []\n")).auth.api_keys == ()
    assert load(tmp_path, config_path=write(tmp_path, "[auth]\n")).auth.api_keys == ()


def test_environment_duration_list(tmp_path: Path) -> None:
    settings = load(tmp_path, environ={"JOBSERVER_WEBHOOKS_RETRY_SCHEDULE": "1s,2m, 3"})
    assert settings.webhooks.retry_schedule == (1.0, 120.0, 3.0)


@pytest.mark.parametrize("raw", ['["a", ', '["a", 1]'])
def test_bad_json_list_in_environment(tmp_path: Path, raw: str) -> None:
    error = config_error(tmp_path, environ={"JOBSERVER_TASKS_MODULES": raw})
    assert error.key == "tasks.modules"


def test_known_non_config_variables_are_allowed(tmp_path: Path) -> None:
    environ = {
        "JOBSERVER_URL": "http://127.0.0.1:9999",
        "JOBSERVER_API_KEY": "secret",
        "JOBSERVER_TEST_PG_URL": "postgresql://localhost/test",
        "OTHER_SERVER_PORT": "1",
        "JOBSERVERX_SERVER_PORT": "1",
    }
    assert load(tmp_path, environ=environ) == load(tmp_path)


@pytest.mark.parametrize(
    "name",
    [
        "JOBSERVER_WORKERS_THREDS",
        "JOBSERVER_DATABSE_URL",
        "JOBSERVER_SERVER_NOPE",
        "JOBSERVER_SERVER",
        "JOBSERVER_PORT",
        "JOBSERVER_",
        "jobserver_workers_thredz",
        "JOBSERVER_APIKEY",
    ],
)
def test_unknown_jobserver_variable_is_an_error(tmp_path: Path, name: str) -> None:
    """A mistyped variable is refused as an unknown key in config.toml is, not ignored."""
    error = config_error(tmp_path, environ={name: "2"})
    assert error.key == name
    assert name in str(error)
    assert "unknown" in str(error)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("JOBSERVER_WORKERS_THREDS", "JOBSERVER_WORKERS_THREADS"),
        ("JOBSERVER_DATABSE_URL", "JOBSERVER_DATABASE_URL"),
        ("JOBSERVER_APIKEY", "JOBSERVER_API_KEY"),
    ],
)
def test_unknown_variable_error_suggests_the_closest_name(tmp_path: Path, name: str, suggestion: str) -> None:
    assert f"did you mean {suggestion}?" in str(config_error(tmp_path, environ={name: "2"}))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        (0, 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("5s", 5.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        (" 1.5 h ", 5400.0),
        ("10S", 10.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", [-1, -0.5, "-5s", "5x", "", "s", "1h30m", True, None, [1], float("inf"), "nan"]
)
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_durations_in_every_form_through_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [workers]
        lease_seconds = 12
        shutdown_grace_seconds = 2.5
        poll_interval = "250ms"
        [retention]
        finished_jobs = "30d"
        idempotency_keys = "1h"
        interval = "30"
        """,
    )
    settings = load(tmp_path, config_path=path)
    assert settings.workers.lease_seconds == 12.0
    assert settings.workers.shutdown_grace_seconds == 2.5
    assert settings.workers.poll_interval == 0.25
    assert settings.retention.finished_jobs == 30 * 86400.0
    assert settings.retention.idempotency_keys == 3600.0
    assert settings.retention.interval == 30.0


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"JOBSERVER_WORKERS_THREADS": "0"}, "workers.threads"),
        ({"JOBSERVER_WORKERS_THREADS": "many"}, "workers.threads"),
        ({"JOBSERVER_WORKERS_THREADS": "100000000"}, "workers.threads"),  # each is an OS thread
        ({"JOBSERVER_SERVER_PORT": "70000"}, "server.port"),
        ({"JOBSERVER_SERVER_MAX_BODY_BYTES": "0"}, "server.max_body_bytes"),
        ({"JOBSERVER_SERVER_LOG_FORMAT": "xml"}, "server.log_format"),
        ({"JOBSERVER_SERVER_LOG_LEVEL": "loud"}, "server.log_level"),
        ({"JOBSERVER_DATABASE_SYNCHRONOUS": "off"}, "database.synchronous"),
        ({"JOBSERVER_DATABASE_BUSY_TIMEOUT": "-1s"}, "database.busy_timeout"),
        ({"JOBSERVER_WORKERS_LEASE_SECONDS": "0"}, "workers.lease_seconds"),
        ({"JOBSERVER_WEBHOOKS_ALLOW_PRIVATE": "maybe"}, "webhooks.allow_private"),
        ({"JOBSERVER_WEBHOOKS_RETRY_SCHEDULE": "5s,soon"}, "webhooks.retry_schedule"),
        ({"JOBSERVER_RETENTION_FINISHED_JOBS": "a week"}, "retention.finished_jobs"),
        ({"JOBSERVER_RETENTION_FINISHED_JOBS": "0"}, "retention.finished_jobs"),
        ({"JOBSERVER_RETENTION_IDEMPOTENCY_KEYS": "0s"}, "retention.idempotency_keys"),
        ({"JOBSERVER_RETENTION_IDEMPOTENCY_KEYS": "8d"}, "retention.idempotency_keys"),
        ({"JOBSERVER_EVENTS_MAX_LOG_LINES": "0"}, "events.max_log_lines"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, environ: dict[str, str], key: str) -> None:
    error = config_error(tmp_path, environ=environ)
    assert error.key == key
    assert key in str(error)
    assert next(iter(environ)) in str(error)


def test_bad_file_value_names_the_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\nthreads = -2\n")
    error = config_error(tmp_path, config_path=path)
    assert error.key == "workers.threads"
    assert str(path) in str(error)


def test_bad_list_item_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[webhooks]\nretry_schedule = ["5s", "-1m"]\n')
    error = config_error(tmp_path, config_path=path)
    assert error.key == "webhooks.retry_schedule"
    assert "item 1" in str(error)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nprot = 8000\n", "server.prot"),
        ("[servers]\nport = 8000\n", "servers"),
        ("debug = true\n", "debug"),
    ],
)
def test_unknown_key_in_file_is_an_error(tmp_path: Path, text: str, key: str) -> None:
    error = config_error(tmp_path, config_path=write(tmp_path, text))
    assert error.key == key
    assert "unknown key" in str(error)


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'server = "x"\n')
    assert config_error(tmp_path, config_path=path).key == "server"
    error = config_error(tmp_path, config_path=path, environ={"JOBSERVER_SERVER_PORT": "1"})
    assert error.key == "server"


def test_relative_sqlite_url_resolves_against_cwd(tmp_path: Path) -> None:
    settings = load(tmp_path, environ={"JOBSERVER_DATABASE_URL": "sqlite:///state/../jobs.db"})
    assert settings.sqlite_path() == tmp_path / "jobs.db"
    assert settings.database.url == f"sqlite:///{tmp_path}/jobs.db"
    assert settings.database.url.startswith("sqlite:////")


def test_absolute_sqlite_url(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "jobs.db"
    settings = load(tmp_path / "cwd", environ={"JOBSERVER_DATABASE_URL": f"sqlite:///{target}"})
    assert settings.sqlite_path() == target
    path = settings.sqlite_path()
    assert path is not None and path.is_absolute()


@pytest.mark.parametrize("url", ["postgresql://u:p@db:5432/jobs", "postgres://localhost/jobs"])
def test_postgres_url(tmp_path: Path, url: str) -> None:
    settings = load(tmp_path, environ={"JOBSERVER_DATABASE_URL": url})
    assert settings.is_postgres
    assert settings.sqlite_path() is None
    assert settings.database.url == url


@pytest.mark.parametrize(
    "url",
    [
        "mysql://localhost/jobs",
        "sqlite://jobs.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///a.db?mode=ro",
        "jobs.db",
    ],
)
def test_bad_database_url(tmp_path: Path, url: str) -> None:
    error = config_error(tmp_path, environ={"JOBSERVER_DATABASE_URL": url})
    assert error.key == "database.url"


@pytest.mark.parametrize(
    "secret", ["", SECRET, "whsec_" + "QUJD", "whsec_QUJ"]
)  # unpadded, as signing takes it
def test_webhook_secret_accepted(tmp_path: Path, secret: str) -> None:
    settings = load(tmp_path, environ={"JOBSERVER_WEBHOOKS_SECRET": secret})
    assert settings.webhooks.secret == secret


@pytest.mark.parametrize(
    "secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_not base64!", "whsec_Q", "whsk_QUJD"]
)
def test_webhook_secret_refused(tmp_path: Path, secret: str) -> None:
    error = config_error(tmp_path, environ={"JOBSERVER_WEBHOOKS_SECRET": secret})
    assert error.key == "webhooks.secret"
    assert secret == "whsec_" or secret not in str(error)


def test_previous_webhook_secrets_for_a_rotation(tmp_path: Path) -> None:
    old, older = "whsec_QUJD", "whsec_REVGRw"
    settings = load(tmp_path, environ={"JOBSERVER_WEBHOOKS_PREVIOUS_SECRETS": f"{old}, {older}"})
    assert settings.webhooks.previous_secrets == (old, older)
    for bad in ("whsec_QUJD,MfKQ9r8GKYqrTwjUPD8I", "whsec_QUJD,whsec_"):
        error = config_error(tmp_path, environ={"JOBSERVER_WEBHOOKS_PREVIOUS_SECRETS": bad})
        assert error.key == "webhooks.previous_secrets"
        assert "MfKQ9r8GKYqrTwjUPD8I" not in str(error) and "QUJD" not in str(error)


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        environ={
            "JOBSERVER_WEBHOOKS_SECRET": SECRET,
            "JOBSERVER_WEBHOOKS_PREVIOUS_SECRETS": "whsec_QUJD",
            "JOBSERVER_AUTH_API_KEYS": "key-123",
        },
    )
    assert SECRET not in repr(settings) and "whsec_QUJD" not in repr(settings)
    assert "key-123" not in repr(settings)


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load(tmp_path)
    with pytest.raises(ValidationError):
        settings.server.port = 1
    with pytest.raises(ValidationError):
        settings.server = settings.server


def test_repo_config_toml_equals_the_defaults(tmp_path: Path) -> None:
    repo_file = REPO_ROOT / "config.toml"
    with repo_file.open("rb") as f:
        raw = tomllib.load(f)
    assert Settings.model_validate(raw) == Settings()
    assert load(tmp_path, config_path=repo_file) == load(tmp_path)
    sections = set(Settings.model_fields) - {"schedules"}  # a list of tables, none by default
    assert set(raw) == sections
    for section in sections:
        assert set(raw[section]) == set(getattr(Settings(), section).model_dump()), section


@pytest.mark.parametrize(
    ("toml", "key", "said"),
    [
        ("[server]\nport = true\n", "server.port", "not true"),
        ("[workers]\nthreads = true\n", "workers.threads", "not true"),
        ('[server]\nhost = ""\n', "server.host", "every interface"),
    ],
)
def test_values_that_read_as_something_else_are_refused(
    tmp_path: Path, toml: str, key: str, said: str
) -> None:
    """`true` is not the number 1, and an empty host (an unset variable) is not every interface."""
    path = write(tmp_path, toml)
    error = config_error(tmp_path, config_path=path)
    assert error.key == key and said in str(error), str(error)
    assert config_error(tmp_path, environ={"JOBSERVER_SERVER_HOST": ""}).key == "server.host"


def test_idempotency_keys_never_outlive_the_jobs_they_replay(tmp_path: Path) -> None:
    short = load(tmp_path, config_path=write(tmp_path, '[retention]\nfinished_jobs = "2h"\n'))
    assert short.retention.finished_jobs == short.retention.idempotency_keys == 7200
    error = config_error(
        tmp_path, config_path=write(tmp_path, '[retention]\nfinished_jobs = "2h"\nidempotency_keys = "3h"\n')
    )
    assert error.key == "retention.idempotency_keys" and "finished_jobs" in str(error)
