"""`fusecomm testbed run`: `fusecomm run` from the testbed's switch namespace across its nodes
(the testbed itself: fusecomm/runner/testbed.py)."""
import ctypes
import os
import signal
import sys
import threading
import time

from fusecomm.runner.testbed import (AGENT_FILE, OMPI_LAUNCH_MCA, TestbedError, hosts_arg,
                                     is_complete, processes_by_namespace, read_state)


def mpi_args(state):
    """mpirun arguments that launch across the testbed's nodes."""
    mca = dict(OMPI_LAUNCH_MCA, plm_rsh_agent=AGENT_FILE,
               oob_tcp_if_include=state["subnet"], btl_tcp_if_include=state["subnet"])
    if state["intra_link"] != "none":
        mca["btl"] = "self,tcp"  # no shared memory: ranks on a node use the shaped loopback
    return [item for key, value in mca.items() for item in ("--mca", key, value)]


def enter_namespace(name):
    """Moves this process (and so every child) into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newnet = 0x40000000
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, clone_newnet) != 0:
            err = ctypes.get_errno()
            raise TestbedError(f"cannot enter network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def end_daemons_after_ranks(state, stop, grace_seconds=10.0):
    """Open MPI 4.1 with --enable-recovery (which `fusecomm run` uses so that survivors can
    report a death) leaves mpirun and the daemons of remote nodes waiting forever once a rank
    on such a node has died: measured here, even with every other rank exited and the daemons
    terminated. So once every rank of the job has ended and mpirun is still there after a grace
    period, mpirun (this process's child) and the daemons are ended; `fusecomm run` then
    reports the failure the ranks' markers gave."""
    ranks_seen = False
    idle_since = None
    signals = [signal.SIGTERM, signal.SIGKILL]
    while not stop.wait(0.5):
        procs = processes_by_namespace(state["nodes"] + [state["switch"]])
        switch = procs.pop(state["switch"])
        nodes = [p for plist in procs.values() for p in plist]
        daemons = {pid for pid, name in nodes if name == "orted"}
        if len(daemons) < len(nodes):  # a rank, or the launch of a daemon, is under way
            # Ranks are the daemons' children (not the agent's helpers before a daemon starts).
            ranks_seen = ranks_seen or any(parent_pid(pid) in daemons for pid, _ in nodes)
            idle_since = None
            continue
        launchers = [pid for pid, _ in switch if parent_pid(pid) == os.getpid()]
        if not ranks_seen or not launchers:
            continue
        idle_since = idle_since or time.monotonic()
        if time.monotonic() - idle_since < grace_seconds:
            continue
        sig = signals.pop(0) if len(signals) > 1 else signals[0]
        print(f"fusecomm testbed: every rank has ended, mpirun has not after "
              f"{grace_seconds:.0f} s: sending it {sig.name}", file=sys.stderr, flush=True)
        for pid in launchers + [pid for pid, _ in nodes]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        idle_since = None


def parent_pid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def run(args):
    """`fusecomm testbed run`: `fusecomm run` from the switch namespace across the nodes."""
    from fusecomm.runner import launch

    state = read_state()
    if state is None or not is_complete(state):
        raise TestbedError("the testbed is not up (fusecomm testbed up --nodes N --slots K)")
    if args.hosts or args.hostfile:
        raise TestbedError("fusecomm testbed run chooses the hosts itself (-H is not allowed)")
    capacity = len(state["nodes"]) * state["slots"]
    if args.np > capacity:
        raise TestbedError(f"-np {args.np} exceeds the testbed's {capacity} slots")
    args.hosts = hosts_arg(state)
    args.mpi_args = " ".join(mpi_args(state) + args.mpi_args.split())
    enter_namespace(state["switch"])
    stop = threading.Event()
    watcher = threading.Thread(target=end_daemons_after_ranks, args=(state, stop), daemon=True)
    watcher.start()
    try:
        return launch.run(args)
    finally:
        stop.set()
        watcher.join()
