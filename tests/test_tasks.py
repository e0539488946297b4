"""Tests of jobserver.core.tasks: a task that cannot be registered is a ConfigError naming
the task and the parameter, never a pydantic traceback."""

from __future__ import annotations

import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import Field

from jobserver import JobContext, task
from jobserver.core.errors import ConfigError, InvalidRequestError
from jobserver.core.tasks import Registry, build_taskdef


@pytest.fixture
def modules_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for task modules written by a test; they are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write_module(directory: Path, name: str, source: str) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return name


def definition_error(fn: Callable[..., Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_taskdef(fn)
    return info.value


@task
def takes_a_lock(a: int, lock: threading.Lock) -> None:
    """A parameter pydantic cannot build a validator for."""


@task
def takes_a_callback(a: int, callback: Callable[[int], int]) -> None:
    """Validates, but has no JSON schema (and cannot come from JSON args)."""


@task
def default_not_json(a: int, marker: Any = object()) -> None:
    """A default that no job's stored args could hold."""


@task
def star_args(a: int, *rest: int) -> None:
    """*args cannot be named in a JSON object."""


@task
def underscore(a: int, _hidden: int = 1) -> None:
    """pydantic refuses field names with a leading underscore."""


@task
def unresolved_hint(a: int, b: NotDefinedAnywhere) -> None:  # type: ignore[name-defined]  # noqa: F821
    """A type hint that names nothing."""


@pytest.mark.parametrize(
    ("fn", "param", "words"),
    [
        (takes_a_lock, "lock", "lock"),
        (takes_a_callback, "callback", "Callable"),
        (default_not_json, "marker", "default"),
        (star_args, "rest", "*rest"),
        (underscore, "_hidden", "underscore"),
        (unresolved_hint, "b", "NotDefinedAnywhere"),
    ],
)
def test_bad_parameter_names_the_task_and_the_parameter(
    fn: Callable[..., Any], param: str, words: str
) -> None:
    error = definition_error(fn)
    name = f"{__name__}.{fn.__name__}"
    assert getattr(error, "task", None) == name
    assert getattr(error, "param", None) == param
    message = str(error)
    assert "\n" not in message
    assert name in message
    assert f"parameter {param}" in message
    assert words.lower() in message.lower()


def test_a_task_name_no_submit_could_carry_is_refused_where_it_is_declared() -> None:
    with pytest.raises(ValueError, match="a task's name has 1 to 200 characters, not 201"):
        task(name="t" * 201)(lambda: None)
    task(name="t" * 200)(lambda: None)  # the longest a submit may name


def test_duplicate_task_name_across_modules_names_both_functions(modules_dir: Path) -> None:
    source = """
        from jobserver import task

        @task(name="shared.name")
        def {fn}(x: int) -> int:
            return x
    """
    first = write_module(modules_dir, "dup_tasks_one", source.replace("{fn}", "first"))
    second = write_module(modules_dir, "dup_tasks_two", source.replace("{fn}", "second"))
    with pytest.raises(ConfigError) as info:
        Registry.from_modules([first, second])
    assert getattr(info.value, "task", None) == "shared.name"
    assert "dup_tasks_one.first" in str(info.value)
    assert "dup_tasks_two.second" in str(info.value)


def test_the_same_function_reached_through_two_modules_is_one_task(modules_dir: Path) -> None:
    write_module(
        modules_dir,
        "reexport_a",
        "from jobserver import task\n\n@task\ndef f(x: int) -> int:\n    return x\n",
    )
    write_module(modules_dir, "reexport_b", "from reexport_a import f  # noqa: F401\n")
    registry = Registry.from_modules(["reexport_a", "reexport_b"])
    assert [d.name for d in registry.all()] == ["reexport_a.f"]


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("", "No module named"),
        ("raise RuntimeError('no API token')\n", "RuntimeError: no API token"),
        ("def broken(:\n", "SyntaxError"),
        ("from jobserver import task\n\n@task(max_attempts=0)\ndef f() -> None: ...\n", "max_attempts"),
    ],
)
def test_a_task_module_that_cannot_be_imported_is_a_config_error(
    modules_dir: Path, source: str, words: str
) -> None:
    name = "import_fails_here"
    if source:
        write_module(modules_dir, name, source)
    with pytest.raises(ConfigError) as info:
        Registry.from_modules(["jobserver.examples", name])
    assert info.value.key == "tasks.modules"
    assert name in str(info.value)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_an_import_error_points_at_the_line_in_the_task_module(modules_dir: Path) -> None:
    write_module(modules_dir, "fails_on_line_three", "import os\n\nos.environ['NO_SUCH_VARIABLE_HERE']\n")
    with pytest.raises(ConfigError) as info:
        Registry.from_modules(["fails_on_line_three"])
    assert "KeyError" in str(info.value)
    assert "fails_on_line_three.py:3" in str(info.value)


def test_context_hint_that_only_exists_for_type_checkers(modules_dir: Path) -> None:
    """`ctx: JobContext` imported under TYPE_CHECKING is still the context, not an arg."""
    source = """
        from __future__ import annotations

        from typing import TYPE_CHECKING

        from jobserver import task

        if TYPE_CHECKING:
            from jobserver import JobContext


        @task
        def count(ctx: JobContext, n: int = 3) -> int:
            return n
    """
    registry = Registry.from_modules([write_module(modules_dir, "typing_only_ctx", source)])
    taskdef = registry.get("typing_only_ctx.count")
    assert taskdef.ctx_param == "ctx"
    assert set(taskdef.schema["properties"]) == {"n"}


def test_good_tasks_still_build() -> None:
    @task
    def fine(ctx: JobContext, a: int, b: str = "x", c: list[int] | None = None) -> None:
        """Fine."""

    taskdef = build_taskdef(fine)
    assert taskdef.ctx_param == "ctx"
    assert taskdef.validate_args({"a": 1}) == {"a": 1, "b": "x", "c": None}


def test_annotated_field_constraints_bound_the_args() -> None:
    def bounded(ctx: JobContext, n: Annotated[int, Field(ge=0, le=10)] = 1) -> int:
        return n

    taskdef = build_taskdef(task(bounded))
    assert taskdef.schema["properties"]["n"]["maximum"] == 10
    assert taskdef.validate_args({"n": 3}) == {"n": 3}
    with pytest.raises(InvalidRequestError) as refused:
        taskdef.validate_args({"n": 11})
    assert refused.value.errors[0]["loc"] == ["body", "args", "n"]
