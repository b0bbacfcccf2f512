"""Exceptions raised by fusecomm on every rank a failure concerns."""
from fusecomm import _core

#: A collective failed: ranks disagreed on it, a peer left, the transport broke. Same role as
#: Horovod's HorovodInternalError (a RuntimeError).
CollectiveError = _core.CollectiveError

#: fusecomm was used before init() or after shutdown() (a ValueError, as in Horovod).
NotInitializedError = _core.NotInitializedError

# The Horovod name, so `except hvd.HorovodInternalError` keeps working after the import change.
HorovodInternalError = CollectiveError

__all__ = ["CollectiveError", "NotInitializedError", "HorovodInternalError"]
