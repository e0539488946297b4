"""Limits a task declares: `Concurrency(key, n)` and `Rate(key, n, per, cost)`.

A limit is declared once on `@task(limits=[...])`; at submit each one is bound to
the job's validated args (a templated key such as "llm:{model}" gets its value,
a cost function is called) and the bound form, a `HeldLimit`, is stored on the
job. The claim checks the stored form, so a job's key and cost never change
after it was accepted. Must not import storage or anything above core.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

MAX_KEY_LENGTH = 200
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
Cost = float | Callable[[dict[str, Any]], float]


def _seconds(per: float | str) -> float:
    """A window given as seconds or a string such as "500ms", "1m", "1h"."""
    if isinstance(per, (int, float)):
        value = float(per)
    else:
        match = _DURATION.match(per)
        if match is None:
            raise ValueError(f'a rate window must be seconds or like "1m", "1h": got {per!r}')
        value = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 0 < value < math.inf:
        raise ValueError(f"a rate window must be a finite number of seconds above 0: got {per!r}")
    return value


def usable_units(cost: object) -> bool:
    """A cost a window can add up: a finite number of at least 0 (JSON keeps no inf or NaN)."""
    return not isinstance(cost, bool) and isinstance(cost, (int, float)) and 0 <= cost < math.inf


def _fields(key: str) -> list[str]:
    """The arg names a key template uses ("llm:{model}" -> ["model"])."""
    try:
        parsed = list(string.Formatter().parse(key))
    except ValueError as exc:
        raise ValueError(f"limit key {key!r} is not a valid template: {exc}") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"limit key {key!r} may only name args, as in {{model}}: got {{{name}}}")
        names.append(name)
    return names


@dataclass(frozen=True)
class Concurrency:
    """At most `n` jobs holding `key` run at once, across every process on the database."""

    key: str
    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"Concurrency({self.key!r}): n must be an integer of at least 1")
        _fields(self.key)

    def bind(self, args: Mapping[str, Any]) -> HeldLimit:
        return HeldLimit(_render(self.key, args), "concurrency", self.n, template=self.key)

    def public(self) -> dict[str, Any]:
        return {"kind": "concurrency", "key": self.key, "limit": self.n}


@dataclass(frozen=True, init=False)
class Rate:
    """The costs of jobs started within any window of `per` add up to at most `n`."""

    key: str
    n: float
    per_s: float
    cost: Cost

    def __init__(self, key: str, n: float, per: float | str, cost: Cost = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 < n < math.inf:
            raise ValueError(f"Rate({key!r}): n must be a finite number above 0")
        if not callable(cost) and not usable_units(cost):
            raise ValueError(
                f"Rate({key!r}): cost must be a finite number of at least 0 or a function of the args"
            )
        _fields(key)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "per_s", _seconds(per))
        object.__setattr__(self, "cost", cost)

    def bind(self, args: Mapping[str, Any]) -> HeldLimit:
        cost = self.cost(dict(args)) if callable(self.cost) else self.cost
        if not usable_units(cost):
            raise ValueError(f"the cost of {self.key!r} must be a finite number of at least 0, got {cost!r}")
        if cost > self.n:
            raise ValueError(f"the cost {cost} of {self.key!r} is more than its limit {self.n} per window")
        return HeldLimit(_render(self.key, args), "rate", self.n, self.per_s, float(cost), self.key)

    def public(self) -> dict[str, Any]:
        cost = "computed from the args" if callable(self.cost) else self.cost
        return {"kind": "rate", "key": self.key, "limit": self.n, "per_s": self.per_s, "cost": cost}


Limit = Concurrency | Rate


def _render(template: str, args: Mapping[str, Any]) -> str:
    values = {name: args.get(name) for name in _fields(template)}
    key = template.format_map(
        {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in values.items()}
    )
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"the limit key {key[:60]!r}... must have 1 to {MAX_KEY_LENGTH} characters")
    return key


def check_templates(limits: Iterable[Limit], params: Iterable[str]) -> str | None:
    """Why a task's limits cannot be bound to its args (a key naming no parameter), or None."""
    known = set(params)
    for limit in limits:
        for name in _fields(limit.key):
            if name not in known:
                return f"limit key {limit.key!r} names {name!r}, which is not a parameter of the task"
    return None


@dataclass(frozen=True, slots=True)
class HeldLimit:
    """A limit bound to one job: the key it holds and what one start of it costs."""

    key: str
    kind: Literal["concurrency", "rate"]
    n: float
    per_s: float | None = None
    cost: float = 1.0
    template: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "kind": self.kind, "n": self.n, "t": self.template}
        if self.kind == "rate":
            out["per"] = self.per_s
            out["cost"] = self.cost
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeldLimit:
        kind: Literal["concurrency", "rate"] = "rate" if data["kind"] == "rate" else "concurrency"
        return cls(
            str(data["key"]), kind, float(data["n"]), data.get("per"), float(data.get("cost", 1.0)),
            str(data.get("t", "")),
        )  # fmt: skip


def bind_all(limits: Sequence[Limit], args: Mapping[str, Any]) -> str | None:
    """The job's limits as stored (JSON), or None when the task has none; ValueError when
    a key or cost cannot be made from these args."""
    if not limits:
        return None
    held = [limit.bind(args) for limit in limits]
    keys = [h.key for h in held]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two limits of the job have the same key: {sorted(keys)}")
    return orjson.dumps([h.to_json() for h in held]).decode()


def declared_now(limits: Iterable[Limit]) -> dict[str, tuple[str, float, float | None]]:
    """Each key template the running code declares one way: template -> (kind, n, per_s). A job
    keeps the limits it was bound to at submit; a claim reads them through this, so a deploy that
    changes `n` changes it for jobs already queued. A template two tasks declare differently is
    left out: each job keeps its own."""
    seen: dict[str, set[tuple[str, float, float | None]]] = {}
    for limit in limits:
        per_s = limit.per_s if isinstance(limit, Rate) else None
        kind = "rate" if isinstance(limit, Rate) else "concurrency"
        seen.setdefault(limit.key, set()).add((kind, float(limit.n), per_s))
    return {template: next(iter(ways)) for template, ways in seen.items() if len(ways) == 1}


def as_declared(held: HeldLimit, declared: Mapping[str, tuple[str, float, float | None]]) -> HeldLimit:
    """`held` with the kind, `n` and window the running code declares for its template."""
    now = declared.get(held.template) if held.template else None
    if now is None or now == (held.kind, held.n, held.per_s):
        return held
    kind, n, per_s = now
    # a cost above a lowered n could never fit: it takes the whole window instead
    return replace(
        held, kind="rate" if kind == "rate" else "concurrency", n=n, per_s=per_s, cost=min(held.cost, n)
    )


def load_held(text: str | None) -> list[HeldLimit]:
    """The stored limits of a job."""
    if not text:
        return []
    return [HeldLimit.from_json(item) for item in orjson.loads(text)]
