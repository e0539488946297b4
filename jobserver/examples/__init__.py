"""Example tasks, registered by default so a new server has something to run.

    curl -s localhost:8000/jobs -H 'content-type: application/json' \
         -d '{"task": "jobserver.examples.add", "args": {"a": 2, "b": 3}}'
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Annotated, Any

import httpx
from pydantic import Field

from jobserver import ChildFailed, JobContext, Timeout, task
from jobserver.examples.webpages import (
    FOLDER_PATTERN,
    STOPWORDS,
    WORD,
    fetch_page,
    publish_report,
    summarize,
)


@task
def noop() -> None:
    """Do nothing (for benchmarks)."""


@task
def now() -> float:
    """Return the time the task started, in epoch seconds (for pickup-latency benchmarks)."""
    return time.time()


@task
def await_signal(ctx: JobContext, name: str = "go", timeout: float | None = None) -> dict[str, object]:
    """Park until the signal `name` comes (or `timeout` passes); its payload and when the run
    resumed, in epoch seconds (for signal-latency benchmarks)."""
    payload = ctx.wait_for(name, timeout=timeout)
    return {"payload": payload, "resumed_at": time.time()}


@task
def fan_out(ctx: JobContext, n: Annotated[int, Field(ge=0, le=10_000)] = 10) -> dict[str, object]:
    """Spawn `n` no-op children in one transaction and gather them; how long the spawn took
    and when the parent resumed after its last child, in epoch seconds (for benchmarks)."""
    began = time.perf_counter()
    ids = ctx.spawn_many("children", "jobserver.examples.noop", [{}] * n)
    spent = time.perf_counter() - began
    spawn_s = ctx.step("spawn-time", lambda: spent)  # the first run's figure, kept for the rerun
    results = ctx.gather("all", ids)
    return {"children": len(results), "spawn_s": spawn_s, "resumed_at": time.time()}


@task
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@task
def sleep(
    ctx: JobContext,
    seconds: Annotated[float, Field(ge=0)] = 1.0,
    steps: Annotated[int, Field(ge=1, le=1000)] = 10,
) -> dict[str, float]:
    """Sleep for `seconds`, reporting progress and a log line in `steps` steps; stops when cancelled."""
    for i in range(steps):
        ctx.check_cancelled()
        ctx.progress(i, steps, f"step {i + 1} of {steps}")
        ctx.log(f"step {i + 1} of {steps}")
        time.sleep(seconds / steps)
    ctx.progress(steps, steps, "done")
    return {"slept": seconds}


@task
async def async_sleep(ctx: JobContext, seconds: float = 1.0) -> dict[str, float]:
    """Await `seconds` of simulated I/O (an async task)."""
    ctx.progress(0, 1, "waiting")
    await asyncio.sleep(seconds)
    ctx.progress(1, 1, "done")
    return {"slept": seconds}


@task(max_attempts=3, backoff=(0.2, 2.0))
def flaky(ctx: JobContext, fail_times: int = 2) -> dict[str, int]:
    """Fail the first `fail_times` attempts, then succeed (shows retries with backoff)."""
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"attempt {ctx.attempt} failed on purpose")
    return {"succeeded_on_attempt": ctx.attempt}


@task
def fail(message: str = "this task always fails") -> None:
    """Always fail (shows how an error is reported)."""
    raise RuntimeError(message)


@task(max_attempts=3)
def analyze_documents(ctx: JobContext, documents: list[str], top: int = 5) -> dict[str, object]:
    """Analyze a batch of documents: word counts and top keywords per document, each a durable step."""
    results = []
    for i, text in enumerate(documents):
        ctx.check_cancelled()
        ctx.progress(i, len(documents), f"document {i + 1} of {len(documents)}")
        results.append(ctx.step(f"doc-{i}", _analyze, text, top))
    ctx.progress(len(documents), len(documents), "done")
    overall: Counter[str] = Counter()
    for r in results:
        overall.update(dict(r["keywords"]))
    return {"documents": results, "top_keywords": overall.most_common(top)}


def _analyze(text: str, top: int) -> dict[str, object]:
    words = [w.lower() for w in WORD.findall(text)]
    counts = Counter(w for w in words if w not in STOPWORDS)
    return {"words": len(words), "keywords": counts.most_common(top)}


# a source that cannot be reached for a while is retried, and so is an attempt past its time limit
# (a page read costs nothing); a URL that can never work is not, nor one refused as not public
# (AddressRefused)
RETRIED_FETCH_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, Timeout)


@task(max_attempts=3, timeout=120, backoff=(1.0, 30.0), retry_on=RETRIED_FETCH_ERRORS)
async def read_source(ctx: JobContext, question: str, url: str) -> dict[str, str]:
    """One sub-query of the research agent: fetch a page and keep its text (a durable step).

    Only public addresses are fetched, redirects included: the URL is the client's, the
    request is the server's (see `fetch_page`)."""
    ctx.progress(0, 1, f"reading {url}")
    page: dict[str, str] = await ctx.step("fetch", fetch_page, url)
    ctx.progress(1, 1, f"read {page['title'] or url}")
    return page


@task(max_attempts=3, timeout=600, backoff=(1.0, 30.0))
async def research(
    ctx: JobContext,
    question: str,
    urls: list[str],
    sentences: int = 5,
    approval_timeout: float = 86_400.0,
    publish_dir: Annotated[str, Field(pattern=FOLDER_PATTERN)] = "",
) -> dict[str, object]:
    """Research agent: one child job per source, gathered; a drafted report that waits for a
    person's approval (signal `approval`, e.g. `{"approved": true}`); then published as a file,
    `data/reports/[<publish_dir>/]<job id>.md` in the server's working directory.

    `publish_dir` is at most one plain folder name: the client picks where among the reports,
    never where on the server's disk.

    Nothing holds a worker while the children run or while the draft waits: the job parks
    (`waiting`) and runs again from the top, where every finished call returns its stored
    result, so no page is fetched twice and the draft is written once, even across restarts."""
    ctx.progress(0, 4, f"reading {len(urls)} sources")
    ids = await ctx.spawn_many(
        "sources", "jobserver.examples.read_source", [{"question": question, "url": u} for u in urls]
    )
    ends = await ctx.gather("read", ids, return_exceptions=True)
    pages = [page for page in ends if isinstance(page, dict)]
    failed = [end.job_id for end in ends if isinstance(end, ChildFailed)]
    ctx.progress(1, 4, f"read {len(pages)} of {len(urls)} sources")

    def draft() -> dict[str, Any]:
        ctx.log(f"drafted a report from {len(pages)} pages")
        return {
            "question": question,
            "pages": len(pages),
            "failed_sources": failed,
            **summarize(question, pages, sentences),
        }

    report: dict[str, Any] = await ctx.step("draft", draft)
    ctx.progress(2, 4, "waiting for approval (signal 'approval')")
    decision = await ctx.wait_for("approval", timeout=approval_timeout)
    if decision is None:
        return {**report, "published": None, "outcome": "approval timed out"}
    if not (isinstance(decision, dict) and decision.get("approved")):
        return {**report, "published": None, "outcome": "rejected", "decision": decision}
    ctx.progress(3, 4, "publishing")
    path = await ctx.step("publish", publish_report, publish_dir, ctx.job_id, report)
    ctx.progress(4, 4, "published")
    return {**report, "published": path, "outcome": "published", "decision": decision}
