"""Example tasks, registered by default so a new server has something to run.

    curl -s localhost:8000/jobs -H 'content-type: application/json' \
         -d '{"task": "jobserver.examples.add", "args": {"a": 2, "b": 3}}'
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from jobserver import JobContext, task
from jobserver.examples.webpages import STOPWORDS, WORD, fetch_page, summarize


@task
def noop() -> None:
    """Do nothing (for benchmarks)."""


@task
def now() -> float:
    """Return the time the task started, in epoch seconds (for pickup-latency benchmarks)."""
    return time.time()


@task
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@task
def sleep(ctx: JobContext, seconds: float = 1.0, steps: int = 10) -> dict[str, float]:
    """Sleep for `seconds`, reporting progress in `steps` steps; stops when cancelled."""
    for i in range(steps):
        ctx.check_cancelled()
        ctx.progress(i, steps, f"step {i + 1} of {steps}")
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


@task(max_attempts=3, timeout=600, backoff=(1.0, 30.0))
async def research(
    ctx: JobContext, question: str, urls: list[str], sentences: int = 5, concurrency: int = 8
) -> dict[str, object]:
    """Research agent: fetch pages concurrently, extract their text, and write an extractive summary.

    Each fetch is a durable step, so a retry or a restart after a crash does not
    fetch (or pay for) a finished page again."""

    limit = asyncio.Semaphore(max(1, concurrency))
    done = 0

    async def one(i: int, url: str) -> dict[str, str]:
        nonlocal done
        async with limit:
            ctx.check_cancelled()
            page: dict[str, str] = await ctx.step(f"fetch:{i}:{url}", fetch_page, url)
        done += 1
        ctx.progress(done, len(urls), f"read {url}")
        ctx.log(f"fetched {url} ({len(page['text'])} chars)")
        return page

    ctx.progress(0, len(urls), "fetching pages")
    pages = await asyncio.gather(*(one(i, u) for i, u in enumerate(urls)))
    ctx.check_cancelled()
    summary = await ctx.step("summarize", summarize, question, pages, sentences)
    return {"question": question, "pages": len(pages), **summary}
