"""jobserver's benchmark: `python -m bench [--quick] [--scale] [--sync-full] [--json] [--config FILE]`.

It starts the real server (`python -m jobserver`) and, in the same run, the
machine's own limits (a bare Starlette route under the same uvicorn settings,
raw SQLite inserts), then prints each jobserver figure next to its limit:

    __main__.py          options, plan (quick/full), order of the run
    loadgen.py           raw HTTP/1.1 keep-alive client on uvloop (own process)
    rawclient.py         one-request-at-a-time client, the after-idle pattern, event streams
    servers.py           child processes: start, wait ready, peak RSS, stop
    baselines.py         machine limits: canned responder, bare route, SQLite
    seed.py              the jobs table as the bench writes it directly; query plans
    scale.py             --scale: seeded databases (finished, delayed, due backlog)
    plan.py              sizes and durations of the quick and full plans
    jobserver_figures.py the server under test and its figures
    report.py            the table (or JSON)
"""
