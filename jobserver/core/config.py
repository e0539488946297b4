"""Settings: the frozen, validated configuration of one server process.

Owns the config schema (sections, keys, defaults, limits), duration parsing, and
the merge defaults < config.toml < JOBSERVER_<SECTION>_<KEY> environment <
overrides (CLI flags). Every invalid value becomes `ConfigError(key, message)`
naming the dotted key. A JOBSERVER_* variable that names no config key and is not
one of NON_CONFIG_VARIABLES is an error too, as an unknown key in config.toml is.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from jobserver.core.bounds import MAX_STORED_DEPTH
from jobserver.core.errors import ConfigError
from jobserver.core.schedules import ScheduleSpec

_DURATION_RE = re.compile(r"^(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|m|h|d)?$")
_UNIT_SECONDS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENV_PREFIX = "JOBSERVER_"
TEXT_KEYS = "text_keys"  # validation context: the dotted keys given as text (environment, command line)
NON_CONFIG_VARIABLES = frozenset(
    {
        "JOBSERVER_URL",  # the client commands: where the server is
        "JOBSERVER_API_KEY",  # the client commands: the key they send
        "JOBSERVER_TEST_PG_URL",  # the test suite: the PostgreSQL server of the postgres tests
        "JOBSERVER_TEST_SCHEMATHESIS_CLI",  # the test suite: also run the Schemathesis command (minutes)
    }
)
"""JOBSERVER_* variables that are not config keys; any other JOBSERVER_* name must be one."""
_KEEP_BLANK_ITEMS = frozenset({"auth.api_keys"})  # a blank key is refused, not dropped: auth never fails open
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_PREFIX = "sqlite:///"


def parse_duration(value: object) -> float:
    """Turn 30, 1.5, "30", "500ms", "5s", "5m", "24h" or "7d" into float seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"a duration must be a number of seconds or a string like '5s', not {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        if text.startswith("-"):
            raise ValueError(f"a duration must not be negative: {value!r}")
        match = _DURATION_RE.match(text)
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: use seconds or a number with ms, s, m, h or d (e.g. '500ms', '5m', '7d')"
            )
        seconds = float(match["num"]) * _UNIT_SECONDS[match["unit"] or "s"]
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite: {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration must not be negative: {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Float seconds, given as a number or a string like "500ms" / "5m" / "7d"."""

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def webhook_secret_key(secret: str) -> bytes:
    """The HMAC key inside a "whsec_<base64>" secret, padded or not (as Standard Webhooks writes
    it); ValueError when it is not one. Checked here when the config is read, used to sign."""
    encoded = secret.removeprefix("whsec_")
    try:
        if not secret.startswith("whsec_"):
            raise ValueError("no whsec_ prefix")
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError('the secret must be "" or "whsec_" followed by base64') from None
    if not key:
        raise ValueError('the secret must be "" or "whsec_" followed by base64 of a key, not empty')
    return key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: object, info: ValidationInfo) -> object:
        """`port = true` is a mistake, not port 1 (pydantic alone reads true as 1), and so is
        `threads = "4"` in the file: a number there is written as one. Only the environment and
        the command line, where every value is text, give numbers as text (`TEXT_KEYS` in the
        validation context)."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None or field.annotation not in (int, float):
            return value
        if isinstance(value, bool):
            raise ValueError(f"must be a number, not {str(value).lower()}")
        if isinstance(value, str) and not any(isinstance(m, BeforeValidator) for m in field.metadata):
            # (a duration's own parser reads text: "2m")
            key = f"{_section_names().get(cls, '')}.{info.field_name}"
            if key not in (info.context or {}).get(TEXT_KEYS, ()):
                raise ValueError(f"must be a number, not the string {value!r}: write it without quotes")
        return value


class ServerSettings(_Section):
    """[server]: where the API listens and how much it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_args_bytes: int = Field(default=65_536, gt=0)
    max_header_bytes: int = Field(default=32_768, ge=1024)
    max_header_lines: int = Field(default=100, ge=1)
    header_timeout: Duration = Field(default=10.0, gt=0)
    body_timeout: Duration = Field(default=30.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    # with no API keys, the Host names answered besides this machine's own ("*": any)
    allowed_hosts: tuple[str, ...] = ()
    max_json_depth: int = Field(default=64, ge=2, le=MAX_STORED_DEPTH)
    log_level: LogLevel = "info"
    log_format: Literal["text", "json"] = "text"

    @field_validator("host")
    @classmethod
    def _a_host(cls, value: str) -> str:
        """An empty host (an unset variable, say) would listen on every interface."""
        if not value.strip() or value != value.strip():
            raise ValueError("must name an address, e.g. 127.0.0.1 (0.0.0.0 for every interface)")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class DatabaseSettings(_Section):
    """[database]: the SQLite file or the PostgreSQL server that holds the jobs."""

    url: str = "sqlite:///data/jobserver.db"
    synchronous: Literal["normal", "full"] = "normal"
    busy_timeout: Duration = 5.0
    notify: bool = True  # PostgreSQL: nodes wake each other with LISTEN/NOTIFY (else they poll)
    startup_check: Duration = 5.0
    startup_wait: Duration = Field(default=30.0, ge=0)  # PostgreSQL: how long a start waits for it to answer

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if url.startswith(_POSTGRES_SCHEMES):
            return url
        if not url.startswith(_SQLITE_PREFIX):
            raise ValueError(
                f"unsupported database URL {url!r}: use sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or postgresql://..."
            )
        path = url[len(_SQLITE_PREFIX) :]
        if path in ("", ":memory:") or path.endswith("/"):
            raise ValueError(f"{url!r} names no database file; jobs must outlive the process")
        if "?" in path:
            raise ValueError(f"{url!r}: URL query parameters are not supported; use the [database] keys")
        return url


MAX_WORKER_THREADS = 1000  # each is an OS thread made at start; far more would fail half-started


class WorkersSettings(_Section):
    """[workers]: how many jobs run at once and how crashes are detected."""

    threads: int = Field(default=4, ge=1, le=MAX_WORKER_THREADS)
    async_concurrency: int = Field(default=100, ge=1)
    lease_seconds: Duration = Field(default=30.0, gt=0)
    shutdown_grace_seconds: Duration = 30.0
    poll_interval: Duration = Field(default=1.0, gt=0)


class TasksSettings(_Section):
    """[tasks]: modules whose @task functions are registered at start."""

    modules: tuple[str, ...] = ("jobserver.examples",)


class AuthSettings(_Section):
    """[auth]: bearer API keys; none means the API is open."""

    api_keys: tuple[str, ...] = Field(default=(), repr=False)
    open_paths: tuple[str, ...] = ("/healthz",)  # never need a key (probes, scrapers)

    @field_validator("open_paths")
    @classmethod
    def _absolute_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for path in paths:
            if not path.startswith("/") or "?" in path:
                raise ValueError(f"{path!r} is not a route path: give it as '/readyz'")
        return paths

    @field_validator("api_keys")
    @classmethod
    def _no_blank_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        if any(not key.strip() for key in keys):
            raise ValueError("an API key must not be blank")
        return keys


class WebhooksSettings(_Section):
    """[webhooks]: signing secret, address policy and delivery retries."""

    secret: str = Field(default="", repr=False)
    # during a rotation, the secrets receivers may still verify with: each delivery is signed
    # with `secret` and with each of these (Standard Webhooks' list of signatures)
    previous_secrets: tuple[str, ...] = Field(default=(), repr=False)
    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()
    # Stripe-like: the last try lands about three days after the first (the contract's promise).
    retry_schedule: tuple[Duration, ...] = (
        5.0,
        300.0,
        1800.0,
        7200.0,
        18000.0,
        36000.0,
        36000.0,
        72000.0,
        86400.0,
    )
    timeout: Duration = Field(default=10.0, gt=0)

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, secret: str) -> str:
        if secret != "":
            webhook_secret_key(secret)
        return secret

    @field_validator("previous_secrets")
    @classmethod
    def _check_previous_secrets(cls, secrets: tuple[str, ...]) -> tuple[str, ...]:
        for secret in secrets:
            if not secret.startswith("whsec_"):  # "" too: an empty key signs nothing worth checking
                raise ValueError('each previous secret must be "whsec_" followed by base64')
            webhook_secret_key(secret)
        return secrets


class RetentionSettings(_Section):
    """[retention]: how long finished jobs and idempotency keys are kept."""

    # zero would prune a result before anyone could read it, and turn idempotency off
    finished_jobs: Duration = Field(default=7 * 86400.0, gt=0)
    idempotency_keys: Duration = Field(default=86400.0, gt=0)
    interval: Duration = Field(default=60.0, gt=0)
    batch_size: int = Field(default=500, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _keys_default_within_the_jobs_life(cls, data: Any) -> Any:
        """Unset, the keys' horizon is the default's 24 hours or the jobs' own, the shorter."""
        if isinstance(data, Mapping) and "idempotency_keys" not in data and "finished_jobs" in data:
            try:
                jobs = parse_duration(data["finished_jobs"])
            except ValueError:
                return data  # the field's own check names the error
            if jobs < cls.model_fields["idempotency_keys"].default:
                return {**data, "idempotency_keys": jobs}
        return data

    @field_validator("idempotency_keys")
    @classmethod
    def _within_the_jobs_life(cls, value: float, info: ValidationInfo) -> float:
        """A key replays its job: a key kept longer than its job would let the same request make
        a second job once the first was pruned, within the window the key promises."""
        jobs = info.data.get("finished_jobs")
        if jobs is not None and value > jobs:
            raise ValueError(
                f"must not be longer than retention.finished_jobs ({jobs:g}s): a key replays its job, "
                "which would be pruned first"
            )
        return value


class EventsSettings(_Section):
    """[events]: per-job log retention and progress write batching."""

    max_log_lines: int = Field(default=1000, ge=1)
    progress_flush_interval: Duration = 0.1


class Settings(_Section):
    """The whole configuration, one frozen section per TOML table."""

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    workers: WorkersSettings = WorkersSettings()
    tasks: TasksSettings = TasksSettings()
    auth: AuthSettings = AuthSettings()
    webhooks: WebhooksSettings = WebhooksSettings()
    retention: RetentionSettings = RetentionSettings()
    events: EventsSettings = EventsSettings()
    schedules: tuple[ScheduleSpec, ...] = ()  # [[schedules]]: checked against the tasks at start

    @property
    def is_postgres(self) -> bool:
        """True when the database URL is postgresql:// or postgres://."""
        return self.database.url.startswith(_POSTGRES_SCHEMES)

    def sqlite_path(self) -> Path | None:
        """The SQLite file (absolute after load_settings); None on PostgreSQL."""
        if self.is_postgres:
            return None
        return Path(self.database.url[len(_SQLITE_PREFIX) :])


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge defaults < config.toml < JOBSERVER_* environment < overrides and validate.

    Without `config_path`, `<cwd>/config.toml` is read when it exists. Override
    keys are dotted ("server.port"); a None value means "not given".
    """
    base = Path(cwd if cwd is not None else Path.cwd()).absolute()
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = _config_file(config_path, base)
    if path is not None:
        data = _read_toml(path)
        sources = {f"{s}.{k}": str(path) for s, t in data.items() if isinstance(t, dict) for k in t}
    text_keys: set[str] = set()  # keys whose values are text by nature (environment, command line)
    env = os.environ if environ is None else environ
    for name in sorted(env):
        key = _env_key(name)
        if key is not None:
            text_keys.add(key)
            value = _coerce(key, env[name])
            if key == "auth.api_keys" and not value:
                # unlike `api_keys = []` in the file, a variable set to nothing is likely a
                # deployment mistake (an unset $KEYS); running open would fail open
                raise ConfigError(
                    key, f"no API key in environment variable {name}; unset it to run without auth"
                )
            _put(data, key, value)
            sources[key] = f"environment variable {name}"
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if _field_of(key) is None:
            raise ConfigError(key, "unknown key")
        _put(data, key, _coerce(key, value))
        sources[key] = "command line"
        text_keys.add(key)
    _check_schedules(data.get("schedules", []))
    try:
        settings = Settings.model_validate(data, context={TEXT_KEYS: text_keys})
    except ValidationError as exc:
        raise _to_config_error(exc, sources) from exc
    return _resolve_sqlite(settings, base)


def _check_schedules(tables: object) -> None:
    """Each [[schedules]] table is valid and its name unique; ConfigError names the bad schedule."""
    if not isinstance(tables, list):
        raise ConfigError("schedules", "write each schedule as a [[schedules]] table")
    seen: set[str] = set()
    for i, table in enumerate(tables):
        name = table.get("name") if isinstance(table, dict) else None
        label = f"schedules.{name}" if isinstance(name, str) and name else f"schedules[{i}]"
        try:
            spec = ScheduleSpec.model_validate(table)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise ConfigError(
                f"{label}.{field}" if field else label, message.removeprefix("Value error, ")
            ) from exc
        if spec.name in seen:
            raise ConfigError(label, "two schedules have this name")
        seen.add(spec.name)


def _config_file(config_path: str | os.PathLike[str] | None, base: Path) -> Path | None:
    """The config file to read: `config_path`, else ./config.toml when there is one. A
    ./config.toml that is there but no file (a directory, as `docker run -v` makes for a host
    file that is missing; a link to nothing) is an error, not a start on the built-in defaults."""
    if config_path is None:
        path = base / "config.toml"
        if not path.exists() and not path.is_symlink():
            return None
    else:
        path = base / Path(config_path)
    if path.is_dir():
        raise ConfigError(str(path), "is a directory, not a config file")
    if not path.is_file():
        reason = "a link to nothing" if path.is_symlink() else "config file not found"
        raise ConfigError(str(path), reason)
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read the config file: {exc}") from exc


def _field_of(key: str) -> FieldInfo | None:
    """The pydantic FieldInfo of a dotted "section.key", or None when there is no such key."""
    section, _, name = key.partition(".")
    section_field = Settings.model_fields.get(section)
    model = section_field.annotation if section_field is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    return model.model_fields.get(name)


def _env_key(name: str) -> str | None:
    """Map JOBSERVER_WORKERS_LEASE_SECONDS to "workers.lease_seconds"; None for a variable that is
    not ours or is a known non-config one; ConfigError for any other JOBSERVER_* name."""
    upper = name.upper()
    if not upper.startswith(_ENV_PREFIX) or upper in NON_CONFIG_VARIABLES:
        return None
    section, _, rest = name[len(_ENV_PREFIX) :].lower().partition("_")
    key = f"{section}.{rest}"
    if rest and _field_of(key) is not None:
        return key
    raise ConfigError(name, f"unknown environment variable; {_closest_variable(upper)}")


def _closest_variable(upper: str) -> str:
    """A hint for a mistyped variable: the nearest known name, or how names are formed."""
    known = [f"{_ENV_PREFIX}{s}_{k}".upper() for s, m in _sections().items() for k in m.model_fields]
    known += sorted(NON_CONFIG_VARIABLES)
    suffixes = {name[len(_ENV_PREFIX) :]: name for name in known}
    close = difflib.get_close_matches(upper[len(_ENV_PREFIX) :], list(suffixes), n=1, cutoff=0.75)
    if close:
        return f"did you mean {suffixes[close[0]]}?"
    return "a config key is set as JOBSERVER_<SECTION>_<KEY>, e.g. JOBSERVER_SERVER_PORT"


@functools.cache
def _section_names() -> dict[type[BaseModel], str]:
    """Section model -> its name."""
    return {model: name for name, model in _sections().items()}


def _sections() -> dict[str, type[BaseModel]]:
    """Section name -> its settings model."""
    return {
        name: field.annotation
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }


def _coerce(key: str, value: Any) -> Any:
    """Split list values given as text: JSON ('["a","b"]') or comma-separated."""
    field = _field_of(key)
    if not isinstance(value, str) or field is None or get_origin(field.annotation) is not tuple:
        return value
    text = value.strip()
    if not text.startswith("["):
        items = [item.strip() for item in text.split(",")] if text else []
        return items if key in _KEEP_BLANK_ITEMS else [item for item in items if item]
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(key, f"not a valid JSON list: {exc}") from exc
    if not isinstance(items, list):
        raise ConfigError(key, "expected a JSON list")
    return items


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    table = data.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(section, f"[{section}] must be a table")
    table[name] = value


def _to_config_error(exc: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    """Every validation error, the first as the ConfigError's dotted key, each saying where its
    value came from: an operator fixes them all in one go, not one per start."""
    described = [_describe_error(error, sources) for error in exc.errors()]
    (key, message), rest = described[0], described[1:]
    if rest:
        message += "; also " + "; ".join(f"{k or 'config'}: {m}" for k, m in rest)
    return ConfigError(key or "config", message)


def _describe_error(error: Any, sources: Mapping[str, str]) -> tuple[str, str]:
    """(dotted key, what is wrong with it) for one pydantic error."""
    key = ".".join(str(part) for part in error["loc"] if isinstance(part, str))
    index = [part for part in error["loc"] if isinstance(part, int)]
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    message = message.removeprefix("Value error, ")
    if index:
        message = f"item {index[0]}: {message}"
    if key in sources:
        message = f"{message} (from {sources[key]})"
    return key, message


def _resolve_sqlite(settings: Settings, base: Path) -> Settings:
    """Make a relative SQLite path absolute against the working directory of load time."""
    path = settings.sqlite_path()
    if path is None or path.is_absolute():
        return settings
    url = _SQLITE_PREFIX + os.path.normpath(base / path)
    database = settings.database.model_copy(update={"url": url})
    return settings.model_copy(update={"database": database})
