"""Helpers of the example research agent: fetch a page, extract its text, summarize.

Plain functions (no jobserver imports) so they can be wrapped in `ctx.step`.
`publish_report` writes the report as Markdown and replaces the file atomically, so
a rerun of its step (a crash while it ran) still leaves one whole file.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx

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


async def fetch_page(url: str, timeout_s: float = 20.0) -> dict[str, str]:
    """Fetch one page and return its url, title and text."""
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, trust_env=False) as client:
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


def publish_report(directory: str, job_id: str, report: dict[str, Any]) -> str:
    """Write the report as Markdown to `<directory>/<job_id>.md` (atomically); its path."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{job_id}.md"
    sources = "\n".join(f"- {u}" for u in report.get("sources", []))
    text = f"# {report['question']}\n\n{report['summary']}\n\n## Sources\n\n{sources}\n"
    partial = target.with_suffix(".md.partial")
    partial.write_text(text)
    os.replace(partial, target)
    return str(target.resolve())
