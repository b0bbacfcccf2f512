"""Start-up, shutdown, ranks and process sets: the part of the API shared by every frontend."""
import atexit
import os
import re

from fusecomm import _core, _engine
from fusecomm._frontend import naming
from fusecomm._frontend.validate import check_int
from fusecomm.runner import rank_wrapper

# init() keyword -> environment variable read by the engine (csrc/common/config.cc).
_SETTINGS = {
    "cycle_time_ms": "FUSECOMM_CYCLE_TIME_MS",
    "fusion_threshold": "FUSECOMM_FUSION_THRESHOLD",
    "fusion_plan": "FUSECOMM_FUSION_PLAN",
    "cache_capacity": "FUSECOMM_CACHE_CAPACITY",
    "allreduce_algorithm": "FUSECOMM_ALLREDUCE_ALGORITHM",
    "local_size": "FUSECOMM_LOCAL_SIZE",
    "torus_x": "FUSECOMM_TORUS_X",
    "stall_warning_seconds": "FUSECOMM_STALL_WARNING_SECONDS",
    "stall_shutdown_seconds": "FUSECOMM_STALL_SHUTDOWN_SECONDS",
    "log_level": "FUSECOMM_LOG_LEVEL",
    "liveness_timeout_seconds": "FUSECOMM_LIVENESS_TIMEOUT_SECONDS",
    "data_timeout_seconds": "FUSECOMM_DATA_TIMEOUT_SECONDS",
    "init_timeout_seconds": "FUSECOMM_INIT_TIMEOUT_SECONDS",
    "calibration_file": "FUSECOMM_CALIBRATION_FILE",
    "timeline": "FUSECOMM_TIMELINE",
    "gpu_transport": "FUSECOMM_GPU_TRANSPORT",
    "deadlock_seconds": "FUSECOMM_DEADLOCK_SECONDS",
}

_atexit_registered = False


class ProcessSet:
    """A group of ranks that negotiates and fuses on its own (Horovod's ProcessSet).

    Create it with the global ranks it contains, then register it with add_process_set() or
    init(process_sets=[...]) on every rank."""

    def __init__(self, ranks_or_comm):
        if hasattr(ranks_or_comm, "Get_group"):  # an mpi4py communicator: take its world ranks
            from mpi4py import MPI  # only when the caller already uses mpi4py

            group = ranks_or_comm.Get_group()
            ranks = MPI.Group.Translate_ranks(group, list(range(group.Get_size())),
                                              MPI.COMM_WORLD.Get_group())
        else:
            ranks = ranks_or_comm
        try:
            self.ranks = sorted(int(r) for r in ranks)
        except TypeError:
            raise TypeError("a ProcessSet takes a list of ranks or an mpi4py communicator") from None
        self.process_set_id = None

    def _id(self):
        if self.process_set_id is None:
            raise ValueError(f"process set {self.ranks} has not been added; call "
                             "add_process_set() on every rank first")
        return self.process_set_id

    def size(self):
        return len(_core.process_set_ranks(self._id()))

    def rank(self):
        """This process's rank inside the set, or -1 if it is not a member."""
        return _core.process_set_rank(self._id())

    def included(self):
        return self.rank() >= 0

    def __repr__(self):
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks})"


class _GlobalProcessSet(ProcessSet):
    def __init__(self):
        self.ranks = None
        self.process_set_id = 0

    def size(self):
        return _core.size()

    def rank(self):
        return _core.rank()

    def __repr__(self):
        return "ProcessSet(process_set_id=0, ranks=all)"


global_process_set = _GlobalProcessSet()
_added_sets = []


def process_set_id(process_set):
    if process_set is None or process_set is global_process_set:
        return 0
    if not isinstance(process_set, ProcessSet):
        raise TypeError(f"process_set must be a ProcessSet, not {type(process_set).__name__}")
    return process_set._id()


def root_in_set(root_rank, process_set):
    """Horovod names a broadcast's root by its global rank, also inside a process set; the
    engine wants its index in the set."""
    root = check_int(root_rank, "root_rank")
    if process_set is None or process_set_id(process_set) == 0:
        return root
    ranks = _core.process_set_ranks(process_set_id(process_set))
    if root not in ranks:
        raise ValueError(f"root rank {root} is not in process set {ranks} (root_rank is a global "
                         "rank, as in Horovod)")
    return ranks.index(root)


def init(comm=None, process_sets=None, **settings):
    """Starts fusecomm on this rank. Collective: every rank calls it.

    comm: None (all ranks of the job), an mpi4py communicator, or a list of global ranks.
    process_sets: ProcessSets to register now (or "dynamic", accepted for Horovod scripts).
    settings: any of %s, overriding the FUSECOMM_* environment variables.
    """
    global _atexit_registered
    for key, value in settings.items():
        if key not in _SETTINGS:
            raise TypeError(f"init() got an unknown setting {key!r}; known: {', '.join(_SETTINGS)}")
        if value is not None:
            os.environ[_SETTINGS[key]] = str(value)
    comm_address, ranks = 0, []
    if comm is not None:
        if hasattr(comm, "Get_rank"):
            from mpi4py import MPI

            comm_address = MPI._addressof(comm)
        else:
            try:
                ranks = [check_int(r, "rank") for r in comm]
            except TypeError:
                raise TypeError("init(comm=...) takes an mpi4py communicator or a list of ranks") from None
    if _core.stopped():
        # The engine stopped by itself (stall shutdown): init() starts it again, as Horovod's
        # does after shutdown(); what was pending there has failed already.
        shutdown()
    try:
        _core.init(comm_address, ranks)
    except ValueError as e:
        _report_failing_peer(str(e))
        raise
    if not _atexit_registered:
        # Registered after any mpi4py import, so it runs before mpi4py finalizes MPI.
        atexit.register(_shutdown_at_exit)
        _atexit_registered = True
    if process_sets and process_sets != "dynamic":
        for ps in process_sets:
            add_process_set(ps)


init.__doc__ = init.__doc__ % ", ".join(_SETTINGS)


def shutdown(_at_exit=False):
    """Stops the engine on this rank. Pending operations on every rank fail with a message
    naming the rank that shut down."""
    _core.shutdown(_at_exit)
    for ps in _added_sets:
        ps.process_set_id = None
    _added_sets.clear()
    _engine.forget_all_handles()
    naming.reset()


def _report_failing_peer(init_error):
    """When init() failed only because of other ranks (their ranks lead the message), tells
    `fusecomm run`, so that it names them and not this rank."""
    failing = re.findall(r"(?:^init\(\) failed on |; )rank (\d+): ", init_error)
    mine = rank_wrapper.rank_id()
    if failing and mine not in failing:
        rank_wrapper.report_caused_by(failing[0])


def _shutdown_at_exit():
    # Before shutdown tells the peers this rank leaves: `fusecomm run` then knows this rank's
    # failure (if the exit is one) came before theirs.
    rank_wrapper.report_exit_started()
    try:
        shutdown(_at_exit=True)
    finally:
        _core.finalize_mpi()


def is_initialized():
    return _core.is_initialized()


def rank():
    return _core.rank()


def size():
    return _core.size()


def local_rank():
    return _core.local_rank()


def local_size():
    return _core.local_size()


def cross_rank():
    return _core.cross_rank()


def cross_size():
    return _core.cross_size()


def is_homogeneous():
    return _core.is_homogeneous()


def mpi_threads_supported():
    return True  # init() insists on MPI_THREAD_MULTIPLE


def mpi_built():
    return True


def mpi_enabled():
    return True


def gloo_built():
    return False


def gloo_enabled():
    return False


def nccl_built():
    return bool(_core.build_info()["nccl"])


def cuda_built():
    return bool(_core.build_info()["cuda"])


def rocm_built():
    return False


def ddl_built():
    return False


def ccl_built():
    return False


def start_timeline(file_path, mark_cycles=False):
    """Starts writing a Chrome-trace timeline (open it in Perfetto or chrome://tracing): per
    tensor NEGOTIATE, QUEUE, MEMCPY_IN_FUSION_BUFFER, the collective with its algorithm and
    bytes, MEMCPY_OUT_FUSION_BUFFER; cycle marks with mark_cycles. Rank 0 writes the file;
    call it on every rank, as in Horovod."""
    _core.start_timeline(str(file_path), bool(mark_cycles))


def stop_timeline():
    """Finishes the timeline file (it is valid JSON afterwards)."""
    _core.stop_timeline()


def add_process_set(process_set):
    """Registers a process set. Collective over all ranks, called in the same order everywhere."""
    if not isinstance(process_set, ProcessSet):
        process_set = ProcessSet(process_set)
    if process_set.process_set_id is not None:
        raise ValueError(f"{process_set} has already been added")
    process_set.process_set_id = _core.add_process_set(process_set.ranks)
    _added_sets.append(process_set)
    return process_set


def remove_process_set(process_set):
    """Removes a process set added before. Collective over all ranks. Returns True if removed."""
    if not isinstance(process_set, ProcessSet) or process_set.process_set_id in (None, 0):
        return False
    _core.remove_process_set(process_set.process_set_id)
    process_set.process_set_id = None
    if process_set in _added_sets:
        _added_sets.remove(process_set)
    return True
