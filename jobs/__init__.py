"""Entry points users run against a cluster: submit wrappers and the evaluation schedule.

    python -m jobs.submit <stage> [--address URL] -- ARGS...   # train, tune, evaluate, schedule as a Ray job
    python -m jobs.schedule --once | --watch --interval SECONDS                      # evaluate new versions

See docs/jobs.md.
"""
