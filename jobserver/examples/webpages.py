"""Helpers of the example research agent: fetch a page, extract its text, summarize.

Plain functions (no job context) so they can be wrapped in `ctx.step`.

Any client that can submit a job chooses the URLs and the report's folder, so neither
may reach past what the server means to offer: `fetch_page` reaches public addresses
only (`jobserver.public_addresses`; the server's environment variable
EXAMPLES_ALLOW_HOSTS lists exceptions, for pages served on a developer's own machine),
and reports stay under `data/reports` in the server's working directory.
`publish_report` writes the report as Markdown and replaces the file atomically, so
a rerun of its step (a crash while it ran) still leaves one whole file.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import os
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx

from jobserver import AddressRefused, check_address, public_addresses

ALLOW_HOSTS_VARIABLE = "EXAMPLES_ALLOW_HOSTS"
REPORTS_ROOT = Path("data/reports")
# one plain folder name (or none): no separator, and no leading dot, so neither "." nor ".."
FOLDER_PATTERN = r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,63})?$"
_FOLDER = re.compile(FOLDER_PATTERN)
_SKIP = {"script", "style", "noscript", "template", "svg", "head"}
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[a-zA-Z][a-zA-Z'-]+")
STOPWORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "of",
        "to",
        "in",
        "is",
        "it",
        "for",
        "on",
        "with",
        "as",
        "at",
        "by",
        "this",
        "that",
        "be",
        "are",
        "was",
        "from",
        "which",
        "were",
        "has",
        "have",
        "had",
        "not",
        "but",
        "they",
        "their",
        "its",
        "can",
        "will",
        "more",
        "also",
        "than",
        "into",
        "about",
    ]
)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in _SKIP:
            self._skip += 1
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP and self._skip:
            self._skip -= 1
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data.strip()
        elif not self._skip and data.strip():
            self.parts.append(data.strip())


def extract_text(html: str) -> tuple[str, str]:
    """(title, visible text) of an HTML page."""
    parser = _TextExtractor()
    parser.feed(html)
    return parser.title, " ".join(parser.parts)


def allowed_hosts() -> list[str]:
    """The non-public hosts, addresses or networks the examples may fetch from, read at each
    fetch so that whoever runs the server (or a test) decides, not the client."""
    return [h.strip() for h in os.environ.get(ALLOW_HOSTS_VARIABLE, "").split(",") if h.strip()]


def _refused(exc: AddressRefused) -> AddressRefused:
    advice = f"the server's environment variable {ALLOW_HOSTS_VARIABLE} can list it for local testing"
    return AddressRefused(exc.host, exc.address, advice)


async def _check_peer(host: str, allow: list[str], event: str, info: dict[str, Any]) -> None:
    """httpcore's trace hook: refuse the connection, before a byte of the request is sent, when
    the address it reached is not the kind screened (a name can resolve differently the
    second time, which is how DNS rebinding gets past a check made before connecting)."""
    if event != "connection.connect_tcp.complete":
        return
    stream = info["return_value"]
    peer = stream.get_extra_info("server_addr")
    try:
        if not peer:
            raise RuntimeError(f"cannot tell which address {host} was connected to")
        check_address(host, ipaddress.ip_address(peer[0]), allow)
    except Exception as exc:
        await stream.aclose()  # httpcore has not taken the connection yet: nothing else closes it
        if isinstance(exc, AddressRefused):
            raise _refused(exc) from None
        raise


async def fetch_page(url: str, timeout_s: float = 20.0) -> dict[str, str]:
    """Fetch one page and return its url, title and text.

    Every request, the first and each redirect's, is screened before it is sent, and
    its connection is checked once made; a refusal raises AddressRefused, which a
    retry cannot cure."""
    allow = allowed_hosts()

    async def screen(request: httpx.Request) -> None:
        host = request.url.raw_host.decode("ascii")
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            await asyncio.to_thread(public_addresses, host, port, allow)
        except AddressRefused as exc:
            raise _refused(exc) from None
        except (OSError, UnicodeError) as exc:  # as httpx would report it, so it is retried alike
            raise httpx.ConnectError(f"{host} does not resolve ({exc})", request=request) from exc
        request.extensions["trace"] = functools.partial(_check_peer, host, allow)

    async with httpx.AsyncClient(
        timeout=timeout_s, follow_redirects=True, trust_env=False, event_hooks={"request": [screen]}
    ) as client:
        response = await client.get(url)
        response.raise_for_status()
    title, text = extract_text(response.text)
    return {"url": url, "title": title, "text": text[:200_000]}


def summarize(question: str, pages: list[dict[str, str]], sentences: int) -> dict[str, Any]:
    """Pick the sentences that best cover the question and the pages' frequent words."""
    words = Counter(w.lower() for p in pages for w in WORD.findall(p["text"]) if w.lower() not in STOPWORDS)
    focus = {w.lower() for w in WORD.findall(question)} - STOPWORDS
    scored = []
    for p in pages:
        for s in _SENTENCE.split(p["text"]):
            tokens = [w.lower() for w in WORD.findall(s)]
            if len(tokens) < 4:
                continue
            score = sum(words[t] for t in tokens if t not in STOPWORDS) / math.sqrt(len(tokens))
            score *= 1 + sum(t in focus for t in tokens)
            scored.append((score, s.strip(), p["url"]))
    best = sorted(scored, key=lambda x: -x[0])[:sentences]
    return {
        "summary": " ".join(s for _, s, _ in best),
        "sources": sorted({u for _, _, u in best}),
        "keywords": [w for w, _ in words.most_common(10)],
    }


def publish_report(folder: str, job_id: str, report: dict[str, Any]) -> str:
    """Write the report as Markdown to `data/reports/<folder>/<job_id>.md` (atomically); its path.

    The folder name is checked here as well as by the task's args, so that no caller
    can make this write outside `data/reports`."""
    if not _FOLDER.fullmatch(folder):
        raise ValueError(f"{folder!r} is not a plain folder name")
    directory = REPORTS_ROOT / folder
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{job_id}.md"
    sources = "\n".join(f"- {u}" for u in report.get("sources", []))
    text = f"# {report['question']}\n\n{report['summary']}\n\n## Sources\n\n{sources}\n"
    partial = target.with_suffix(".md.partial")
    partial.write_text(text)
    os.replace(partial, target)
    return str(target.resolve())
