"""An example task module with a dependency of its own (humanize), baked into an image
built FROM jobserver (see Dockerfile beside it)."""

from __future__ import annotations

import humanize

from jobserver import JobContext, task


@task(max_attempts=3)
def describe_size(ctx: JobContext, size_bytes: int) -> str:
    """A file size for people, e.g. 3000000 -> "3.0 MB"."""
    ctx.progress(1, 1, "formatted")
    return str(humanize.naturalsize(size_bytes))
