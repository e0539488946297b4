"""Task registry: the `@task` decorator, task definitions and args validation.

`@task` only marks a function (it stays a plain callable); a `Registry` is built
from the modules named in `tasks.modules`, so there is no global registry. Each
task's parameters become a pydantic model used to validate a job's `args` at
submit time and to rebuild typed arguments when it runs.

Imports errors only (and JobContext lazily, by name, to spot the context parameter).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_type_hints, overload

import pydantic
from pydantic import ConfigDict

from jobserver.core.errors import InvalidRequestError, TaskNotFoundError

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
        }


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
        """Validated args with defaults filled in, as JSON-ready values; 422 when bad."""
        try:
            model = self.args_model.model_validate(args if args is not None else {})
        except pydantic.ValidationError as exc:
            errors = [
                {"loc": ["body", "args", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()
            ]
            raise InvalidRequestError(f"invalid args for task {self.name}", errors) from None
        dumped: dict[str, Any] = model.model_dump(mode="json")
        return dumped

    def call_kwargs(self, args: dict[str, Any]) -> dict[str, Any]:
        """Typed keyword arguments for the function, rebuilt from stored JSON args."""
        model = self.args_model.model_validate(args)
        return {name: getattr(model, name) for name in type(model).model_fields}


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
) -> Any:
    """Mark a sync or async function as a task: `@task` or `@task(max_attempts=3, ...)`."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if on_crash not in ("retry", "fail"):
        raise ValueError('on_crash must be "retry" or "fail"')
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    options = TaskOptions(
        max_attempts,
        (float(backoff[0]), float(backoff[1])),
        tuple(retry_on),
        timeout,
        priority,
        concurrency,
        on_crash,
    )

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, MARK, (name or f"{f.__module__}.{f.__name__}", options))
        return f

    return mark(fn) if fn is not None else mark


def _is_context(annotation: Any) -> bool:
    return getattr(annotation, "__name__", None) == "JobContext"


def build_taskdef(fn: Callable[..., Any]) -> TaskDef:
    """Turn a marked function into a TaskDef (pydantic model from its signature)."""
    name, options = getattr(fn, MARK)
    sig = inspect.signature(fn)
    try:
        hints = get_type_hints(fn)
    except Exception:
        hints = {}
    fields: dict[str, Any] = {}
    ctx_param = None
    for pname, param in sig.parameters.items():
        annotation = hints.get(pname, param.annotation)
        if _is_context(annotation) or (pname == "ctx" and annotation is inspect.Parameter.empty):
            ctx_param = pname
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"task {name}: *args and **kwargs are not supported")
        if annotation is inspect.Parameter.empty:
            annotation = Any
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (annotation, default)
    model = pydantic.create_model(
        f"{name.replace('.', '_')}_args", __config__=ConfigDict(extra="forbid"), **fields
    )
    schema = model.model_json_schema()
    schema["title"] = f"{name} args"
    doc = inspect.getdoc(fn) or ""
    return TaskDef(
        name=name,
        fn=fn,
        options=options,
        args_model=model,
        ctx_param=ctx_param,
        is_async=inspect.iscoroutinefunction(fn),
        description=doc.split("\n\n")[0].strip(),
        schema=schema,
    )


class Registry:
    """Task name -> TaskDef."""

    def __init__(self, defs: Iterable[TaskDef] = ()) -> None:
        self._tasks: dict[str, TaskDef] = {}
        for d in defs:
            self.add(d)

    def add(self, taskdef: TaskDef) -> None:
        """Register one task; a duplicate name is an error."""
        if taskdef.name in self._tasks and self._tasks[taskdef.name].fn is not taskdef.fn:
            raise ValueError(f"two tasks are named {taskdef.name!r}")
        self._tasks[taskdef.name] = taskdef

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> Registry:
        """Import each module and register every function marked with `@task`."""
        registry = cls()
        for module_name in modules:
            module = importlib.import_module(module_name)
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
