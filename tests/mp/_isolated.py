"""Runs multi-rank checks one after another so that a check failing on some ranks does not
wreck the next ones (Horovod test suites are written that way: one assertion per test method,
and the next test expects a clean start).

A rank that fails early never submits the collectives its peers wait on; the engine's deadlock
detector (every rank blocked) or its stall shutdown (stall_shutdown_seconds, given in
`settings`) fails those waits on every rank.
After any failure every rank restarts fusecomm (shutdown() and init(), as Horovod's tests do),
so the unnamed-collective counters, process sets and pending names start afresh."""
import traceback

import fusecomm


def run_isolated(checks, settings):
    """Runs every check (a function of no arguments) on every rank. Returns {check name:
    {rank: traceback}} for the checks that failed somewhere, the same on every rank."""
    fusecomm.shutdown()  # the settings (the stall limit above all) apply from the start
    fusecomm.init(**settings)
    failed = {}
    for check in checks:
        name = check.__name__
        error = None
        try:
            check()
        except Exception:  # noqa: BLE001 - a failing check is reported, not propagated
            error = traceback.format_exc()
        try:
            errors = fusecomm.allgather_object(error, name=f"isolated.{name}")
            restart = any(errors)
        except (fusecomm.CollectiveError, fusecomm.NotInitializedError):
            # The engine stopped (a stall in this check, on every rank together): start it
            # again, then learn the other ranks' results.
            fusecomm.shutdown()
            fusecomm.init(**settings)
            errors = fusecomm.allgather_object(error, name=f"isolated.{name}.again")
            restart = False
        if restart:
            fusecomm.shutdown()
            fusecomm.init(**settings)
        if any(errors):
            failed[name] = {r: e for r, e in enumerate(errors) if e}
    return failed
