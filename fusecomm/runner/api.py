"""fusecomm.run: Horovod's run API (`horovod.run(fn, args, kwargs, num_proc=...)`).

Runs a Python function on every rank of a job started by `fusecomm run` (the same launcher,
flags and exit-status rules) and returns the per-rank results, ordered by rank. The function
and its arguments travel pickled (cloudpickle when installed, so lambdas and closures work)
through a private directory; each rank writes its result, or its traceback, there.

Run as a script, this module is the per-rank side: python api.py <job directory>."""
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback

_FUNCTION_FILE = "function.pkl"

# Horovod's run() options that have no meaning here (elastic jobs, Gloo, jsrun, ssh): accepted
# as None so that calls spelling every keyword still work, refused when set.
_UNSUPPORTED = ("min_num_proc", "max_num_proc", "slots", "reset_limit", "cooldown_range",
                "ssh_port", "ssh_identity_file", "disable_cache", "use_gloo", "use_jsrun",
                "network_interface")


def _pickler():
    try:
        import cloudpickle

        return cloudpickle
    except ImportError:
        return pickle


def _rank_from_environment():
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    raise RuntimeError("fusecomm.run: the rank is not known (no OMPI_COMM_WORLD_RANK, PMI_RANK "
                       "or PMIX_RANK in the environment): was this started by mpirun?")


def _result_file(job_dir, rank):
    return os.path.join(job_dir, f"result.{rank}.pkl")


def _run_rank(job_dir):
    """One rank: call the function, store ("ok", value) or ("error", traceback text)."""
    rank = _rank_from_environment()
    try:
        with open(os.path.join(job_dir, _FUNCTION_FILE), "rb") as f:
            fn, args, kwargs = pickle.load(f)
        outcome = ("ok", fn(*args, **kwargs))
        code = 0
    except BaseException:  # noqa: BLE001 - every failure must reach the caller of run()
        outcome = ("error", traceback.format_exc())
        code = 1
    try:
        payload = _pickler().dumps(outcome)
    except Exception as e:  # noqa: BLE001 - an unpicklable result is this rank's failure
        payload = pickle.dumps(("error", f"the result of rank {rank} cannot be pickled: {e}"))
        code = 1
    with open(_result_file(job_dir, rank) + ".tmp", "wb") as f:
        f.write(payload)
    os.replace(_result_file(job_dir, rank) + ".tmp", _result_file(job_dir, rank))
    if code:
        print(outcome[1] if outcome[0] == "error" else "", file=sys.stderr, flush=True)
    return code


def _launcher_command(job_dir, num_proc, hosts, hostfile, mpi_args, verbose, executable,
                      settings):
    from fusecomm.runner import cli

    # cli.py by path (not -m): a source tree in the working directory must not shadow the
    # installed package.
    cmd = [sys.executable, cli.__file__, "run", "-np", str(num_proc)]
    if hosts:
        cmd += ["-H", hosts]
    if hostfile:
        cmd += ["--hostfile", hostfile]
    if mpi_args:
        cmd += ["--mpi-args", mpi_args]
    if verbose:
        cmd += ["--verbose"]
    for key, value in settings.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    return cmd + ["--", executable or sys.executable, os.path.abspath(__file__), job_dir]


def run(func, args=(), kwargs=None, num_proc=None, hosts=None, hostfile=None,
        start_timeout=None, output_filename=None, verbose=None, use_mpi=None, mpi_args=None,
        executable=None, np=None, timeout=None, settings=None, **unsupported):
    """Runs func(*args, **kwargs) on num_proc ranks (Horovod's horovod.run) and returns the
    list of the ranks' return values, ordered by rank. func usually calls fusecomm.init().

    num_proc (or np): number of ranks. hosts / hostfile / mpi_args / verbose: as for
    `fusecomm run`; with remote hosts the job directory (under TMPDIR) must be on a shared
    file system. executable: the Python of the ranks. output_filename: the launcher's output
    is written there instead of this process's stdout. timeout (fusecomm's, seconds; None:
    none): the job is stopped and TimeoutError raised after it. start_timeout is accepted and
    ignored (mpirun has its own). settings: FUSECOMM_* settings as init() keywords
    (e.g. {"cycle_time_ms": 2}).

    Raises RuntimeError naming the first rank that failed, with its traceback, when any rank
    fails."""
    for key, value in unsupported.items():
        if key not in _UNSUPPORTED:
            raise TypeError(f"run() got an unexpected keyword argument {key!r}")
        if value is not None:
            raise NotImplementedError(f"fusecomm.run does not support {key} (elastic jobs, "
                                      "Gloo, jsrun and ssh options are Horovod-only)")
    if use_mpi is False:
        raise NotImplementedError("fusecomm always runs over MPI; use_mpi=False is not "
                                  "supported")
    if np is not None and num_proc is not None and np != num_proc:
        raise ValueError(f"num_proc={num_proc} and np={np} disagree; pass one of them")
    num_proc = num_proc if num_proc is not None else np
    if num_proc is None:
        raise ValueError("fusecomm.run needs num_proc (the number of ranks)")
    if isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f"num_proc must be a positive integer, not {num_proc!r}")
    if not callable(func):
        raise TypeError(f"func must be callable, not {type(func).__name__}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    from fusecomm.basics import _SETTINGS

    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {', '.join(_SETTINGS)}")

    job_dir = tempfile.mkdtemp(prefix="fusecomm-run-")
    try:
        try:
            payload = _pickler().dumps((func, tuple(args), dict(kwargs or {})))
        except Exception as e:  # noqa: BLE001 - pickling raises many types; callers want one
            raise TypeError(f"fusecomm.run cannot pickle the function or its arguments: {e} "
                            "(install cloudpickle for lambdas and closures)") from None
        with open(os.path.join(job_dir, _FUNCTION_FILE), "wb") as f:
            f.write(payload)
        cmd = _launcher_command(job_dir, num_proc, hosts, hostfile, mpi_args, verbose,
                                executable, settings)
        code = _launch(cmd, output_filename, timeout)
        return _collect(job_dir, num_proc, code)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _launch(cmd, output_filename, timeout):
    """Runs the launcher in its own process group, so a timeout stops mpirun and every rank."""
    out = open(output_filename, "w") if output_filename else None
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise TimeoutError(f"fusecomm.run: the job did not finish in {timeout} s; it was "
                               "stopped") from None
        except BaseException:
            _stop(proc)
            raise
    finally:
        if out:
            out.close()


def _stop(proc):
    """SIGTERM to the launcher's group (mpirun passes it to the ranks), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _collect(job_dir, num_proc, code):
    results, failures = [], []
    for rank in range(num_proc):
        path = _result_file(job_dir, rank)
        if not os.path.exists(path):
            failures.append((rank, "it ended without a result (killed, or it never started)"))
            results.append(None)
            continue
        with open(path, "rb") as f:
            kind, value = pickle.load(f)
        if kind == "error":
            failures.append((rank, value))
            results.append(None)
        else:
            results.append(value)
    if failures:
        rank, why = failures[0]
        others = [r for r, _ in failures[1:]]
        raise RuntimeError(f"fusecomm.run: rank {rank} failed"
                           + (f" (ranks {others} failed too)" if others else "")
                           + f" and the job exited with status {code}:\n{why}")
    if code != 0:
        raise RuntimeError(f"fusecomm.run: every rank returned, but the job exited with status "
                           f"{code}")
    return results


if __name__ == "__main__":
    sys.exit(_run_rank(sys.argv[1]))
