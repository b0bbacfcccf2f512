"""`fusecomm run`: starts a job with the mpirun of the MPI fusecomm was built against."""
import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading

from fusecomm.basics import _SETTINGS
from fusecomm.runner import rank_wrapper


def find_mpirun():
    """The launcher of the MPI this build links against; PATH's mpirun as a fallback."""
    try:
        from fusecomm import _build_config

        candidates = [_build_config.MPIEXEC,
                      os.path.join(os.path.dirname(_build_config.MPI_C_COMPILER), "mpirun")]
    except ImportError:
        candidates = []
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    found = shutil.which("mpirun") or shutil.which("mpiexec")
    if not found:
        sys.exit("fusecomm run: no mpirun found (install Open MPI: scripts/setup.sh)")
    return found


def mpi_flavour(mpirun):
    try:
        text = subprocess.run([mpirun, "--version"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "Open MPI" in text or "OpenRTE" in text:
        return "openmpi"
    if "HYDRA" in text or "MPICH" in text or "Intel" in text:
        return "mpich"
    return "unknown"


def rank_count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of ranks") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"the job needs at least 1 rank (got {value})")
    return value


def add_arguments(parser):
    parser.add_argument("-np", "--num-proc", dest="np", type=rank_count, required=True,
                        help="number of ranks (at least 1)")
    parser.add_argument("-H", "--hosts", help="host:slots,... (default: this machine)")
    parser.add_argument("--hostfile", help="file of hosts, one 'host slots=N' per line")
    parser.add_argument("--mpi-args", default="", help="extra arguments passed to mpirun as is")
    parser.add_argument("--verbose", action="store_true", help="print the mpirun command")
    parser.add_argument("--failure-grace-seconds", type=float,
                        default=os.environ.get("FUSECOMM_FAILURE_GRACE_SECONDS"),
                        help="how long the other ranks may run on after one failed before the "
                             "job is ended (also FUSECOMM_FAILURE_GRACE_SECONDS; default "
                             "2 x max(liveness, init timeout) + 30 s)")
    for key in _SETTINGS:
        parser.add_argument("--" + key.replace("_", "-"), dest=key,
                            help=f"sets {_SETTINGS[key]} on every rank")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the program to run on every rank (after --)")


def build_command(args, mpirun, flavour, is_root, launcher_env=None):
    cmd = [mpirun, "-np", str(args.np)]
    env_pairs = {_SETTINGS[k]: str(getattr(args, k)) for k in _SETTINGS
                 if getattr(args, k) is not None}
    env_pairs.update(launcher_env or {})
    if flavour == "openmpi":
        # More ranks than cores is normal for tests; Open MPI refuses it unless asked.
        # --enable-recovery: when a rank dies the others are not killed at once, so each gets
        # fusecomm's own error naming the dead rank (they exit by themselves right after).
        cmd += ["--oversubscribe", "--bind-to", "none", "--enable-recovery"]
        if is_root:
            cmd += ["--allow-run-as-root"]
        if args.hosts:
            cmd += ["-H", args.hosts]
        if args.hostfile:
            cmd += ["--hostfile", args.hostfile]
        for name, value in env_pairs.items():
            cmd += ["-x", f"{name}={value}"]
        # Forward the caller's FUSECOMM_* and Python settings to remote hosts too.
        for name in sorted(os.environ):
            if name.startswith(("FUSECOMM_", "PYTHON")) and name not in env_pairs:
                cmd += ["-x", name]
    else:
        if args.hosts:
            cmd += ["-hosts", args.hosts]
        if args.hostfile:
            cmd += ["-f", args.hostfile]
        for name, value in env_pairs.items():
            cmd += ["-genv", name, value]
    if args.mpi_args:
        cmd += args.mpi_args.split()
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        sys.exit("fusecomm run: no command given (fusecomm run -np N -- python train.py)")
    # By file path, not -m: the working directory may hold a source tree of fusecomm that would
    # shadow the installed package.
    wrapper = [sys.executable, rank_wrapper.__file__]
    return cmd + wrapper + command, env_pairs


# Printed by Open MPI 4.1's mpirun under --enable-recovery each time a rank ends abnormally: its
# notice of the termination to the other ranks names target processes with a range PMIx 4
# rejects (pmix_event_notification.c, PMIX_ERR_BAD_PARAM). Nothing listens for that notice in
# fusecomm (the heartbeat finds dead ranks), so the line says nothing about the job. mpirun may
# write it into the middle of a rank's line (seen after a rank's end marker), so it is cut out
# wherever it stands.
_PMIX_NOTICE_NOISE = re.compile(
    r"\[[^\]\s]*\] PMIX ERROR: BAD-PARAM in file \S*pmix_event_notification\.c at line \d+")


# How long mpirun may outlive the last rank of a failed job (it needs a moment to collect the
# ranks' statuses and end its daemons).
_MPIRUN_LINGER_SECONDS = 10.0


def _seconds_setting(args, key, default):
    """A rank setting in seconds as the ranks will see it (flag, else environment); the
    default where unset, off (0) or unreadable (the ranks reject a bad value themselves)."""
    text = getattr(args, key) or os.environ.get(_SETTINGS[key])
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if value > 0 else default


def failure_grace_seconds(args):
    """How long the other ranks may still run after one failed. Every fusecomm wait gives up
    within the liveness timeout (a rank waiting in init() for one that never comes, within the
    init timeout) and an exit after a failure within another such period, so this is reached
    only when a rank is stuck outside fusecomm; with --enable-recovery mpirun itself would never
    end the job then."""
    chosen = getattr(args, "failure_grace_seconds", None)
    if chosen is not None and float(chosen) > 0:
        return float(chosen)
    waits = max(_seconds_setting(args, "liveness_timeout_seconds", 15.0),
                _seconds_setting(args, "init_timeout_seconds", 60.0))
    return 2 * waits + 30.0


class _Failures:
    """The ranks' failure markers. The first failure is the earliest of those not caused by
    another rank's failure (rank_wrapper's doc says how each is known), not the first printed."""

    def __init__(self):
        self.markers = []
        self._lock = threading.Lock()  # the status service reads from its own thread

    def add(self, line):
        """Records every marker in `line` (mpirun may glue two ranks' markers onto one line);
        returns how many markers are known."""
        for text in line.split(rank_wrapper.MARKER)[1:]:
            text = text.strip()
            when = rank_wrapper.failure_time(text)
            secondary = rank_wrapper.caused_by(text) is not None
            with self._lock:
                self.markers.append((secondary, when if when is not None else float("inf"),
                                     len(self.markers), text))
        with self._lock:
            return len(self.markers)

    def first(self):
        with self._lock:
            return min(self.markers)[3] if self.markers else None


class _StatusService:
    """Tells ranks which rank has failed. A rank waiting in MPI start-up for a peer cannot
    learn through MPI that the peer died; fusecomm's init watchdog asks here each second
    (csrc/common/launcher_status.h) and ends naming the rank. One line in, one line out:
    the token, then "failed: <first failure>" or "none"."""

    def __init__(self, failures, local_only):
        self._failures = failures
        self._token = secrets.token_hex(16)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A single-host job's ranks find the launcher on the loopback interface; ranks on other
        # hosts need the host's name (and a token, since anyone can connect).
        self._socket.bind(("127.0.0.1" if local_only else "", 0))
        self._socket.listen(128)
        host = "127.0.0.1" if local_only else socket.gethostname()
        self.address = f"{host}:{self._socket.getsockname()[1]}:{self._token}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return  # closed: the job is over
            with conn:
                try:
                    conn.settimeout(2)
                    if conn.recv(256).decode(errors="replace").strip() != self._token:
                        continue
                    first = self._failures.first()
                    reply = f"failed: {rank_wrapper.without_time(first)}" if first else "none"
                    conn.sendall((reply + "\n").encode())
                except OSError:
                    continue  # a rank that gave up waiting; it asks again

    def close(self):
        self._socket.close()


def run(args):
    mpirun = find_mpirun()
    flavour = mpi_flavour(mpirun)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    failures = _Failures()
    status = _StatusService(failures, local_only=not (args.hosts or args.hostfile))
    try:
        return _run_job(args, mpirun, flavour, is_root, failures, status)
    finally:
        status.close()


def _run_job(args, mpirun, flavour, is_root, failures, status):
    cmd, env_pairs = build_command(args, mpirun, flavour, is_root,
                                   {"FUSECOMM_RUN_STATUS": status.address})
    env = dict(os.environ)
    env.update(env_pairs)
    if flavour == "openmpi":
        env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
        if is_root:
            env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    if args.verbose:
        print(" ".join(cmd), file=sys.stderr)
    # Output passes through line by line; the wrappers' markers say how each rank ended.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)
    grace = failure_grace_seconds(args)

    def stop_job(reason=None):
        if proc.poll() is not None:
            return
        if reason:
            print(f"fusecomm run: {reason}, mpirun has not after {_MPIRUN_LINGER_SECONDS:.0f} s; "
                  "ending it", file=sys.stderr, flush=True)
        else:
            print(f"fusecomm run: ranks still running {grace:.0f} s after a rank failed; ending "
                  "the job", file=sys.stderr, flush=True)
        proc.terminate()  # mpirun passes SIGTERM on to the ranks, then kills them
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    backstop = threading.Timer(grace, stop_job)
    backstop.daemon = True
    backstop_started = False
    ended_ranks = {}  # rank -> its exit status, from the wrappers' end markers
    # Open MPI 4.1 under --enable-recovery can wait forever once a rank on a remote host has
    # died, even after every other rank has exited: once every rank's wrapper has said it ended
    # and a rank failed, mpirun gets a short grace and is then ended.
    lingering = threading.Timer(_MPIRUN_LINGER_SECONDS, stop_job,
                                kwargs={"reason": "every rank has ended"})
    lingering.daemon = True
    try:
        for line in proc.stdout:
            if "PMIX ERROR" in line:
                line = _PMIX_NOTICE_NOISE.sub("", line)
                if not line.strip():
                    continue
            ends, line = rank_wrapper.take_end_markers(line)
            ended_ranks.update(ends)
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            if rank_wrapper.MARKER in line:
                known = failures.add(line)
                if known and not backstop_started:
                    backstop_started = True
                    backstop.start()
            if (len(ended_ranks) >= args.np
                    and (failures.first() is not None or any(ended_ranks.values()))
                    and not lingering.is_alive() and not lingering.finished.is_set()):
                lingering.start()
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()
    finally:
        backstop.cancel()
        lingering.cancel()
    first_failure = failures.first()
    if first_failure:
        print(f"fusecomm run: the first rank to fail: {rank_wrapper.without_time(first_failure)}",
              file=sys.stderr)
        return rank_wrapper.exit_status(first_failure) or code or 1
    # Ranks are numbers as text ("?" where the launcher named none): rank 2 comes before 10.
    failed = sorted(((rank, status) for rank, status in ended_ranks.items() if status != 0),
                    key=lambda item: (not item[0].isdigit(), int(item[0]) if item[0].isdigit()
                                      else 0))
    if failed:
        # A failure marker lost in mangled output: the end markers still carry the status.
        rank, status = failed[0]
        print(f"fusecomm run: rank {rank} exited with status {status}", file=sys.stderr)
        return status
    return code
