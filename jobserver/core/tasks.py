"""Task registry: the `@task` decorator, task definitions and args validation.

`@task` only marks a function (it stays a plain callable); a `Registry` is built
from the modules named in `tasks.modules`, so there is no global registry. Each
task's parameters become a pydantic model used to validate a job's `args` at
submit time and to rebuild typed arguments when it runs.

A function that cannot become a task (a parameter type pydantic cannot validate
from JSON, a default that is not JSON, two tasks with one name) and a task module
that cannot be imported raise ConfigError naming the task and parameter, or the
module, in one line. The context parameter is spotted by its annotation's name, so
a hint that exists only for type checkers works too.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import traceback
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_type_hints, overload

import orjson
import pydantic
import pydantic_core
from pydantic import ConfigDict

from jobserver.core.bounds import INT_MAX, INT_MIN, MAX_STORED_DEPTH, TASK_NAME_MAX
from jobserver.core.errors import ConfigError, InvalidRequestError, TaskDefinitionError, TaskNotFoundError
from jobserver.core.limits import Concurrency, Limit, Rate, bind_all, check_templates
from jobserver.core.schemas import json_violations

MARK = "__jobserver_task__"


@dataclass(frozen=True)
class TaskOptions:
    """The options of `@task`."""

    max_attempts: int = 1
    backoff: tuple[float, float] = (1.0, 300.0)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    priority: int = 0
    concurrency: int | None = None
    on_crash: Literal["retry", "fail"] = "retry"
    limits: tuple[Limit, ...] = ()

    def public(self) -> dict[str, Any]:
        """The options as GET /tasks shows them."""
        return {
            "max_attempts": self.max_attempts,
            "backoff": list(self.backoff),
            "retry_on": [t.__name__ for t in self.retry_on],
            "timeout": self.timeout,
            "priority": self.priority,
            "concurrency": self.concurrency,
            "on_crash": self.on_crash,
            "limits": [limit.public() for limit in self.limits],
        }


def _surely_storable(value: Any) -> bool:
    """True when `value` cannot hold what `json_violations` looks for, told without walking it:
    the encoder refuses integers out of range and writes a non-finite number as null, and
    fewer brackets than the depth limit cannot nest past it."""
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return b"null" not in encoded and encoded.count(b"{") + encoded.count(b"[") < MAX_STORED_DEPTH


@dataclass(frozen=True)
class TaskDef:
    """A registered task: the function, its options and its args model."""

    name: str
    fn: Callable[..., Any]
    options: TaskOptions
    args_model: type[pydantic.BaseModel]
    ctx_param: str | None
    is_async: bool
    description: str = ""
    schema: dict[str, Any] = field(default_factory=dict)

    def validate_args(self, args: Any) -> dict[str, Any]:
        """Validated args with defaults filled in, as JSON-ready values; 422 when bad.

        Validated as JSON in pydantic's strict mode, so that what is accepted is exactly what
        the published JSON schema allows: "5" is not an integer nor true a number (a number
        whose fraction is zero is an integer, as JSON Schema has it)."""
        try:
            raw = orjson.dumps(integral_numbers(args if args is not None else {}))
        except (TypeError, orjson.JSONEncodeError) as exc:
            unstorable = [
                {"loc": ["body", "args"], "msg": f"not storable as JSON: {exc}", "type": "json_type"}
            ]
            raise InvalidRequestError(f"invalid args for task {self.name}", unstorable) from None
        try:
            model = self.args_model.model_validate_json(raw, strict=True)
        except pydantic.ValidationError as exc:
            errors: list[dict[str, Any]] = [
                {"loc": ["body", "args", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()
            ]
            raise InvalidRequestError(f"invalid args for task {self.name}", errors) from None
        dumped: dict[str, Any] = model.model_dump(mode="json")
        if not _surely_storable(dumped):
            errors = json_violations(dumped, MAX_STORED_DEPTH, ["body", "args"])
            if errors:
                raise InvalidRequestError(f"invalid args for task {self.name}", errors)
        return dumped

    @property
    def limits(self) -> tuple[Limit, ...]:
        """Every limit a job of this task holds; `concurrency=n` is Concurrency(task name, n)."""
        if self.options.concurrency is None:
            return self.options.limits
        own = Concurrency(self.name.replace("{", "{{").replace("}", "}}"), self.options.concurrency)
        return (*self.options.limits, own)

    def bind_limits(self, args: dict[str, Any]) -> str | None:
        """The job's limits bound to its validated args (stored JSON); 422 when a key or cost
        cannot be made from them."""
        try:
            return bind_all(self.limits, args)
        except Exception as exc:  # a cost function is the task author's code: whatever it raises
            error = {"loc": ["body", "args"], "type": "limit", "msg": f"{type(exc).__name__}: {exc}"}
            raise InvalidRequestError(
                f"the limits of task {self.name} cannot apply to these args", [error]
            ) from None

    def call_kwargs(self, args: dict[str, Any]) -> dict[str, Any]:
        """Typed keyword arguments for the function, rebuilt from stored JSON args."""
        model = self.args_model.model_validate(args)
        return {name: getattr(model, name) for name in type(model).model_fields}


def integral_numbers(value: Any) -> Any:
    """JSON values with every number whose fraction is zero written as an integer: JSON's `1`,
    `1.0` and `1e0` are one number (as JSON Schema says); `true` stays apart."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: integral_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_numbers(v) for v in value]
    return value


F = TypeVar("F", bound=Callable[..., Any])


@overload
def task(fn: F) -> F: ...


@overload
def task(
    *,
    name: str | None = None,
    max_attempts: int = 1,
    backoff: tuple[float, float] = (1.0, 300.0),
    retry_on: Iterable[type[BaseException]] = (Exception,),
    timeout: float | None = None,
    priority: int = 0,
    concurrency: int | None = None,
    on_crash: Literal["retry", "fail"] = "retry",
    limits: Iterable[Limit] = (),
) -> Callable[[F], F]: ...


def task(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    max_attempts: int = 1,
    backoff: tuple[float, float] = (1.0, 300.0),
    retry_on: Iterable[type[BaseException]] = (Exception,),
    timeout: float | None = None,
    priority: int = 0,
    concurrency: int | None = None,
    on_crash: Literal["retry", "fail"] = "retry",
    limits: Iterable[Limit] = (),
) -> Any:
    """Mark a sync or async function as a task: `@task` or `@task(max_attempts=3, ...)`."""
    options = TaskOptions(
        max_attempts,
        (float(backoff[0]), float(backoff[1])),
        tuple(retry_on),
        timeout,
        priority,
        concurrency,
        on_crash,
        tuple(limits),
    )

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        task_name = name or f"{f.__module__}.{f.__name__}"
        if not 1 <= len(task_name) <= TASK_NAME_MAX:  # no submit could name it
            raise ValueError(
                f"task {task_name[:80]}...: a task's name has 1 to {TASK_NAME_MAX} characters, not {len(task_name)}"
                " (give a shorter one with @task(name=...))"
            )
        if max_attempts < 1:
            raise ValueError(f"task {task_name}: max_attempts must be at least 1")
        if on_crash not in ("retry", "fail"):
            raise ValueError(f'task {task_name}: on_crash must be "retry" or "fail"')
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"task {task_name}: concurrency must be at least 1")
        for limit in options.limits:
            if not isinstance(limit, (Concurrency, Rate)):
                raise ValueError(
                    f"task {task_name}: limits must be Concurrency(...) or Rate(...), got {limit!r}"
                )
        setattr(f, MARK, (task_name, options))
        return f

    return mark(fn) if fn is not None else mark


def _is_context(annotation: Any) -> bool:
    if isinstance(annotation, str):  # a hint left unresolved, e.g. imported only under TYPE_CHECKING
        return annotation.rpartition(".")[2] == "JobContext"
    return getattr(annotation, "__name__", None) == "JobContext"


def _type_hints(name: str, fn: Callable[..., Any], sig: inspect.Signature) -> dict[str, Any]:
    """The resolved type hint of each parameter; TaskDefinitionError names one that cannot be resolved."""
    try:
        return get_type_hints(fn, include_extras=True)  # keep Annotated[..., Field(...)] constraints
    except Exception:  # any hint (the return's too) spoils the whole call: resolve them one by one
        pass
    namespace = getattr(inspect.unwrap(fn), "__globals__", {})
    hints: dict[str, Any] = {}
    for pname, param in sig.parameters.items():
        raw = param.annotation
        if raw is inspect.Parameter.empty or _is_context(raw):
            continue
        holder = types.SimpleNamespace(__annotations__={pname: raw})
        try:
            hints[pname] = get_type_hints(holder, globalns=namespace, include_extras=True)[pname]
        except Exception as exc:
            message = f"cannot resolve its type hint {raw!r}: {type(exc).__name__}: {exc}"
            raise TaskDefinitionError(name, pname, message) from exc
    return hints


def _shown(raw: Any, annotation: Any) -> str:
    """A type hint as the user wrote it, for messages."""
    if isinstance(raw, str):
        return raw
    if inspect.isroutine(annotation):  # e.g. threading.Lock, a factory function
        return f"{annotation.__module__}.{annotation.__qualname__}"
    return inspect.formatannotation(annotation)


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_sentence(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line.split(". ")[0].rstrip(".")


def _bounded_integers(schema: Any) -> Any:
    """The schema with every integer bounded to what is stored exactly (64 bits), as the API
    enforces: a client reading the schema learns the bounds before a 422 tells it."""
    if isinstance(schema, dict):
        out = {k: _bounded_integers(v) for k, v in schema.items()}
        kind = out.get("type")
        if kind == "integer" or (isinstance(kind, list) and "integer" in kind):
            out["minimum"] = max(out.get("minimum", INT_MIN), INT_MIN)
            out["maximum"] = min(out.get("maximum", INT_MAX), INT_MAX)
        return out
    if isinstance(schema, list):
        return [_bounded_integers(v) for v in schema]
    return schema


def _args_model(
    name: str, fields: dict[str, Any], shown: dict[str, str]
) -> tuple[type[pydantic.BaseModel], dict[str, Any]]:
    """The args model of a task and its JSON schema; TaskDefinitionError names a parameter that breaks it."""
    for pname, (_, default) in fields.items():
        if pname.startswith("_"):
            raise TaskDefinitionError(name, pname, "an args name must not start with an underscore")
        if default is not ...:
            try:
                pydantic_core.to_json(default)
            except Exception as exc:  # whatever the serializer refuses, a job's stored args could not hold it
                message = f"its default {_short_repr(default)} is not JSON-serializable"
                raise TaskDefinitionError(name, pname, message) from exc
    config = ConfigDict(extra="forbid", allow_inf_nan=False)  # JSON has no NaN or Infinity
    try:
        model = pydantic.create_model(f"{name.replace('.', '_')}_args", __config__=config, **fields)
        return model, _bounded_integers(model.model_json_schema())
    except Exception as exc:  # pydantic raises several kinds here; find the parameter behind it
        for pname, spec in fields.items():
            try:
                pydantic.create_model("one_arg", __config__=config, **{pname: spec}).model_json_schema()
            except Exception as one:
                message = (
                    f"its type {shown[pname]} cannot be validated from JSON args: {_first_sentence(one)}"
                )
                raise TaskDefinitionError(name, pname, message) from one
        raise TaskDefinitionError(name, None, f"no args model: {_first_sentence(exc)}") from exc


@functools.cache
def build_taskdef(fn: Callable[..., Any]) -> TaskDef:
    """Turn a marked function into a TaskDef (pydantic model from its signature).

    A definition depends on the function alone and is immutable, so it is built once per
    process: building the args model and its schema is most of what starting an app costs."""
    name, options = getattr(fn, MARK)
    sig = inspect.signature(fn)
    hints = _type_hints(name, fn, sig)
    fields: dict[str, Any] = {}
    shown: dict[str, str] = {}
    ctx_param = None
    for pname, param in sig.parameters.items():
        annotation = hints.get(pname, param.annotation)
        if _is_context(annotation) or (pname == "ctx" and annotation is inspect.Parameter.empty):
            ctx_param = pname
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            stars = "*" if param.kind is param.VAR_POSITIONAL else "**"
            message = f"{stars}{pname} cannot come from a job's args; use a list or dict parameter"
            raise TaskDefinitionError(name, pname, message)
        if annotation is inspect.Parameter.empty:
            annotation = Any
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (annotation, default)
        shown[pname] = _shown(param.annotation, annotation)
    model, schema = _args_model(name, fields, shown)
    problem = check_templates(options.limits, fields)
    if problem is not None:
        raise TaskDefinitionError(name, None, problem)
    schema["title"] = f"{name} args"
    doc = inspect.getdoc(fn) or ""
    taskdef = TaskDef(
        name=name,
        fn=fn,
        options=options,
        args_model=model,
        ctx_param=ctx_param,
        is_async=inspect.iscoroutinefunction(fn),
        description=doc.split("\n\n")[0].strip(),
        schema=schema,
    )
    templates = [limit.key for limit in taskdef.limits]  # `concurrency=n` included
    twice = sorted({t for t in templates if templates.count(t) > 1})
    if twice:  # every job would name the key twice, and every submit of it be refused
        raise TaskDefinitionError(name, None, f"two of its limits have the same key: {twice}")
    return taskdef


# frames of these packages only pass an import error on: the user's line is the last one outside them
_NOT_THE_CULPRIT = tuple(
    str(Path(p).resolve()) + os.sep for p in (Path(__file__).parents[1], Path(importlib.__file__).parent)
)


def _import_error(module_name: str, exc: Exception) -> ConfigError:
    """One line for a module that failed to import: the error and the line of user code that raised it."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<") and not frame.filename.startswith(_NOT_THE_CULPRIT)
    ]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    detail = (str(exc).strip().splitlines() or [""])[0]
    return ConfigError(
        "tasks.modules", f"cannot import {module_name!r}: {type(exc).__name__}: {detail}{where}"
    )


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{getattr(fn, '__qualname__', fn)}"


class Registry:
    """Task name -> TaskDef."""

    def __init__(self, defs: Iterable[TaskDef] = ()) -> None:
        self._tasks: dict[str, TaskDef] = {}
        for d in defs:
            self.add(d)

    def add(self, taskdef: TaskDef) -> None:
        """Register one task; a duplicate name is an error."""
        other = self._tasks.get(taskdef.name)
        if other is not None and other.fn is not taskdef.fn:
            message = (
                f"two functions have this name, {_qualname(other.fn)} and {_qualname(taskdef.fn)}; "
                "rename one with @task(name=...)"
            )
            raise TaskDefinitionError(taskdef.name, None, message)
        self._tasks[taskdef.name] = taskdef

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> Registry:
        """Import each module and register every function marked with `@task`.

        Raises ConfigError (key "tasks.modules") for a module that cannot be imported
        and TaskDefinitionError for a function that cannot be a task.
        """
        registry = cls()
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # whatever the module's own code raises while it loads
                raise _import_error(module_name, exc) from exc
            for value in vars(module).values():
                if callable(value) and hasattr(value, MARK):
                    registry.add(build_taskdef(value))
        return registry

    def get(self, name: str) -> TaskDef:
        """The task, or TaskNotFoundError."""
        try:
            return self._tasks[name]
        except KeyError:
            raise TaskNotFoundError(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def find(self, name: str) -> TaskDef | None:
        """The task, or None when this process does not know it."""
        return self._tasks.get(name)

    def options(self, name: str) -> TaskOptions | None:
        """The task's options, or None when this process does not know it."""
        taskdef = self._tasks.get(name)
        return None if taskdef is None else taskdef.options

    def all(self) -> list[TaskDef]:
        """Every task, sorted by name."""
        return [self._tasks[n] for n in sorted(self._tasks)]
