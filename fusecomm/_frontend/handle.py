"""The one handle type of every face's *_async calls."""
from fusecomm import _engine


def _only(results):
    return results[0]


class Handle:
    """One asynchronous result: the engine operations it waits for and how their results (each
    already a framework value) combine into what synchronize() returns.

    A single collective is one operation; a grouped one, or a sparse all-reduce (indices and
    values all-gathered), several. Waiting on a handle waits for every operation even when one
    fails (no stray engine handles), then raises the first error. A handle can be waited on once;
    a wait interrupted by a signal (KeyboardInterrupt) can be repeated."""

    __slots__ = ("_ids", "_combine", "_results")

    def __init__(self, ids, combine=_only):
        self._ids = tuple(ids)
        self._combine = combine
        self._results = {}

    @classmethod
    def group(cls, handles, combine=list):
        """One handle for several: synchronize() gives combine([each member's result])."""
        handles = list(handles)
        ids, spans = [], []
        for h in handles:
            spans.append((len(ids), len(ids) + len(h._ids), h._combine))
            ids.extend(h._ids)
        return cls(ids, lambda results: combine(
            [member(results[start:stop]) for start, stop, member in spans]))

    def _live_ids(self):
        if self._ids is None:
            raise ValueError(f"unknown handle {self!r}: already synchronized")
        return self._ids

    def poll(self):
        """True when every operation has finished (some may have failed)."""
        return all(_engine.poll(i) for i in self._live_ids())

    def wait(self):
        ids = self._live_ids()
        error = None
        for i in ids:
            if i in self._results:
                continue  # done before an interrupted wait
            try:
                self._results[i] = _engine.synchronize(i)
            except BaseException as e:  # noqa: BLE001 - wait for the others, then raise the first
                if _engine.in_flight(i):
                    # A signal handler raised during the wait (KeyboardInterrupt, or any
                    # exception of the program's own handler): the operation goes on, and the
                    # handle can be waited on again.
                    raise
                self._results[i] = None
                error = error or e
        results = [self._results[i] for i in ids]
        self._ids, self._results = None, None
        if error is not None:
            raise error
        return self._combine(results)

    def __repr__(self):
        return f"Handle({list(self._ids) if self._ids is not None else 'synchronized'})"


def as_handle(handle):
    if not isinstance(handle, Handle):
        raise ValueError(f"unknown handle {handle!r}: not returned by an *_async call")
    return handle


def poll(handle):
    """True when the operation behind `handle` has finished; synchronize() will not block."""
    return as_handle(handle).poll()


def synchronize(handle):
    """Waits for `handle` and returns its result; raises CollectiveError (HorovodInternalError)
    if the operation failed."""
    return as_handle(handle).wait()
