"""Fault injection at start-up and in the launcher: a rank that fails before or during init(),
init() errors that concern one rank or one setting, a program that cannot start, and which rank
`fusecomm run` names. Every case must end on every rank with a message naming the cause, and the
launcher must exit non-zero naming the rank that failed first. Each run is bounded by a timeout:
a hang fails the test (docs/faults.md describes each case and how long it takes)."""
import os
import subprocess
import sys
import time

import pytest

from conftest import CLEAN_ENV, MP_DIR, run_ranks

SCRIPT = MP_DIR / "fault_startup.py"
LIVENESS = 3
# How long init() waits for ranks that never arrive (FUSECOMM_INIT_TIMEOUT_SECONDS; 60 s by
# default, for ranks that import frameworks at different speeds).
INIT_LIMIT = 10
# Generous: the limit plus starting and ending up to 4 Python ranks on a loaded machine.
ENDS_WITHIN = INIT_LIMIT + 50
TIMEOUT = 240


def fusecomm_run(ranks, *args, launcher_args=(), env=None):
    cmd = [sys.executable, "-P", "-m", "fusecomm.runner.cli", "run", "-np", str(ranks),
           "--liveness-timeout-seconds", str(LIVENESS), "--init-timeout-seconds", str(INIT_LIMIT),
           *launcher_args, "--", *map(str, args)]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=TIMEOUT, env=dict(CLEAN_ENV, **(env or {})))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hang: {' '.join(cmd)}\n{e.stdout}")
    return proc, time.monotonic() - started


def check_clean_failure(proc, elapsed, first_failure, code):
    out = proc.stdout
    assert proc.returncode == code, out
    assert f"fusecomm run: the first rank to fail: {first_failure}" in out, out
    assert elapsed < ENDS_WITHIN, f"took {elapsed:.0f} s\n{out}"
    assert "FAIL" not in out, out
    assert "PMIX ERROR" not in out, out  # mpirun's notice noise (launch.py)


@pytest.mark.parametrize("mode, victim, ranks, how", [
    ("raise_before_init", 2, 3, "exited with code 1"),
    ("raise_before_init", 0, 2, "exited with code 1"),
    ("kill_in_mpi_init", 1, 3, "was killed by signal 9 (SIGKILL)"),
    ("kill_in_comm_dup", 2, 4, "was killed by signal 9 (SIGKILL)"),
])
def test_rank_failing_before_or_in_init_ends_the_job(mode, victim, ranks, how):
    if mode == "kill_in_comm_dup":
        pytest.importorskip("mpi4py")
    proc, elapsed = fusecomm_run(ranks, sys.executable, SCRIPT, mode, victim)
    check_clean_failure(proc, elapsed, f"rank {victim} {how}", 1 if "code 1" in how else 137)
    # The launcher tells the waiting ranks who failed (they cannot learn it through MPI).
    for rank in set(range(ranks)) - {victim}:
        assert (f"[fusecomm] rank {rank}: init() cannot complete: rank {victim} {how} (reported "
                "by fusecomm run)" in proc.stdout), proc.stdout


def test_rank_killed_after_the_heartbeat_started_in_init(tmp_path):
    # Rank 0 blocks in init() opening a FIFO as its calibration file (not in MPI: nothing but
    # the watchdog can end it); rank 2 waits for rank 0's broadcast; rank 1 is killed.
    fifo = tmp_path / "calibration.fifo"
    os.mkfifo(fifo)
    proc, elapsed = fusecomm_run(3, sys.executable, SCRIPT, "kill_in_calibration", 1,
                                 env={"FUSECOMM_CALIBRATION_FILE": str(fifo)})
    check_clean_failure(proc, elapsed, "rank 1 was killed by signal 9 (SIGKILL)", 137)
    out = proc.stdout
    assert "[fusecomm] rank 0: init() cannot complete: rank 1 stopped responding" in out, out
    assert "rank 2: INIT RAISED CollectiveError: rank 1 stopped responding" in out, out


def test_init_watchdog_under_plain_mpirun():
    # Rank 1 is alive but never calls init(): rank 0 must not wait in MPI_Init forever.
    started = time.monotonic()
    code, out = run_ranks("fault_startup.py", 2, "never_init", 1, timeout=TIMEOUT,
                          env={"FUSECOMM_LIVENESS_TIMEOUT_SECONDS": str(LIVENESS),
                               "FUSECOMM_INIT_TIMEOUT_SECONDS": str(INIT_LIMIT)},
                          expect_fail=True)
    elapsed = time.monotonic() - started
    assert code != 0, out
    assert f"[fusecomm] rank 0: init() gave up after {INIT_LIMIT} s" in out, out
    assert elapsed < ENDS_WITHIN, f"took {elapsed:.0f} s\n{out}"


@pytest.mark.parametrize("ranks, env, victim_setting, failing_rank, message", [
    (3, {"FUSECOMM_TIMELINE": "/nonexistent/dir/t.json"}, None, 0,
     "init() failed on rank 0: cannot open the timeline file '/nonexistent/dir/t.json' for "
     "writing: No such file or directory"),
    (3, {"FUSECOMM_CALIBRATION_FILE": "/nonexistent/dir/cal.txt"}, None, 0,
     "init() failed on rank 0: FUSECOMM_CALIBRATION_FILE='/nonexistent/dir/cal.txt': the "
     "directory '/nonexistent/dir' does not exist on rank 0"),
    (4, {"FUSECOMM_TORUS_X": "7"}, None, None,
     "FUSECOMM_TORUS_X=7 is wider than the 4 ranks of the job"),
    (2, {"FUSECOMM_GPU_TRANSPORT": "bogus"}, None, None,
     "FUSECOMM_GPU_TRANSPORT must be auto, nccl or mpi (got 'bogus')"),
    (3, {}, "FUSECOMM_CACHE_CAPACITY=-1", 1,
     "init() failed on rank 1: FUSECOMM_CACHE_CAPACITY must be >= 0"),
])
def test_init_error_raises_on_every_rank(ranks, env, victim_setting, failing_rank, message):
    args = [sys.executable, SCRIPT, "init_error", failing_rank or 0]
    if victim_setting:
        args.append(victim_setting)
    proc, elapsed = fusecomm_run(ranks, *args, env=env)
    first = f"rank {failing_rank} exited with code 3" if failing_rank is not None else "rank "
    check_clean_failure(proc, elapsed, first, 3)
    for rank in range(ranks):
        assert f"rank {rank}: INIT RAISED ValueError: " in proc.stdout, proc.stdout
        line = proc.stdout.split(f"rank {rank}: INIT RAISED ValueError: ", 1)[1].splitlines()[0]
        assert message in line, proc.stdout


def test_launcher_names_the_rank_that_failed_first():
    # The ranks that fail because rank 2 did often print their markers first; over three runs
    # the launcher must name rank 2 every time.
    for attempt in range(3):
        proc, elapsed = fusecomm_run(4, sys.executable, SCRIPT, "raise_in_training", 2)
        check_clean_failure(proc, elapsed, "rank 2 exited with code 1", 1)
        assert "rank 2 fails on purpose" in proc.stdout, proc.stdout
        assert proc.stdout.count("fusecomm was shut down by rank 2 (its process exited)") == 3, (
            f"attempt {attempt}\n{proc.stdout}")


def test_launcher_fails_when_the_program_cannot_start():
    proc, elapsed = fusecomm_run(2, "no_such_program_for_fusecomm")
    check_clean_failure(proc, elapsed, "rank ", 127)
    for rank in range(2):
        assert (f"[fusecomm run] rank {rank} could not start 'no_such_program_for_fusecomm': "
                "No such file or directory" in proc.stdout), proc.stdout
    assert "Traceback" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("ranks", ["0", "-1", "two"])
def test_launcher_rejects_a_bad_rank_count(ranks):
    cmd = [sys.executable, "-P", "-m", "fusecomm.runner.cli", "run", "-np", ranks, "--",
           sys.executable, "-c", "print('STARTED')"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=60, env=CLEAN_ENV)
    assert proc.returncode == 2, proc.stdout  # argparse's usage error
    assert "argument -np/--num-proc" in proc.stdout, proc.stdout
    assert "STARTED" not in proc.stdout, proc.stdout


def test_launcher_ends_ranks_stuck_outside_fusecomm():
    # Rank 0 sleeps without calling init() (alive, so nobody has failed yet); rank 1 gives up in
    # init() at its time limit. mpirun --enable-recovery would let rank 0 run on: the launcher
    # ends the job after its grace period.
    from fusecomm.runner import launch

    class Args:
        liveness_timeout_seconds = str(LIVENESS)
        init_timeout_seconds = str(INIT_LIMIT)
        failure_grace_seconds = None

    # The default grace (from the timeouts) is what a job gets; the test sets a shorter one
    # through the environment, as a user may.
    assert launch.failure_grace_seconds(Args()) == 2 * max(LIVENESS, INIT_LIMIT) + 30
    grace = 4.0
    started = time.monotonic()
    proc, elapsed = fusecomm_run(2, sys.executable, SCRIPT, "never_init", 0,
                                 env={"FUSECOMM_FAILURE_GRACE_SECONDS": str(grace)})
    out = proc.stdout
    assert proc.returncode == 1, out
    assert f"[fusecomm] rank 1: init() gave up after {INIT_LIMIT} s waiting for the other" in out
    assert f"ranks still running {grace:.0f} s after a rank failed; ending the job" in out, out
    assert "fusecomm run: the first rank to fail: rank 1 exited with code 1" in out, out
    assert time.monotonic() - started < INIT_LIMIT + grace + 60, out


def test_launcher_reads_markers_glued_onto_one_line():
    # mpirun may print two ranks' markers on one line; the earlier failure is named even when
    # its marker comes second (seen in CI: rank 1's marker, then rank 2's, on one line).
    from fusecomm.runner import launch, rank_wrapper

    failures = launch._Failures()
    marker = rank_wrapper.MARKER
    count = failures.add(f"{marker}rank 1 exited with code 1 (failed at 100.000900)"
                         f"{marker}rank 2 exited with code 1 (failed at 100.000100)\n")
    assert count == 2
    failures.add(f"{marker}rank 3 exited with code 1 (failed at 100.002000)\n")
    assert rank_wrapper.without_time(failures.first()) == "rank 2 exited with code 1"


def test_end_markers_glued_to_a_failure_marker_keep_both():
    # Seen in CI: mpirun printed rank 0's end marker and rank 1's failure marker on one line,
    # and a greedy pattern took the start of the failure marker as rank 0's name.
    from fusecomm.runner import rank_wrapper

    failure = f"{rank_wrapper.MARKER}rank 1 exited with code 1 (failed at 100.000000)\n"
    ends, rest = rank_wrapper.take_end_markers(f"{rank_wrapper.END_MARKER}rank 0 code 0{failure}")
    assert ends == {"0": 0} and rest == failure
    ends, rest = rank_wrapper.take_end_markers(
        f"{rank_wrapper.END_MARKER}rank 1 code -9{rank_wrapper.END_MARKER}rank 0 code 0\n")
    assert ends == {"1": -9, "0": 0} and rest == ""


def test_launcher_exits_non_zero_when_only_an_end_marker_says_a_rank_failed(
        tmp_path, monkeypatch, capfd):
    # mpirun under --enable-recovery exits 0 even when a rank failed (measured with Open MPI
    # 4.1): a failure marker lost in mangled output must not turn a failed job into a success.
    from fusecomm.runner import cli, launch, rank_wrapper

    fake = tmp_path / "mpirun"
    fake.write_text(
        "#!/bin/bash\n"
        "if [ \"$1\" = --version ]; then echo 'mpirun (Open MPI) 4.1.4'; exit 0; fi\n"
        f"echo '{rank_wrapper.END_MARKER}rank 0 code 0' >&2\n"
        f"echo '{rank_wrapper.END_MARKER}rank 10 code 5' >&2\n"
        f"echo '{rank_wrapper.END_MARKER}rank 2 code 4' >&2\n"
        + "".join(f"echo '{rank_wrapper.END_MARKER}rank {r} code 0' >&2\n"
                  for r in (1, 3, 4, 5, 6, 7, 8, 9)) +
        "exit 0\n")
    fake.chmod(0o755)
    monkeypatch.setattr(launch, "find_mpirun", lambda: str(fake))
    code = cli.main(["run", "-np", "11", "--", "true"])
    text = "".join(capfd.readouterr())
    # The lowest failed rank is reported: rank 2, not rank 10 (which sorts first as text).
    assert code == 4, text
    assert "rank 2 exited with status 4" in text, text


def test_launcher_ends_an_mpirun_that_outlives_its_ranks(tmp_path, monkeypatch, capfd):
    # Open MPI 4.1 under --enable-recovery can wait forever after a remote rank died, with every
    # rank gone. A stand-in mpirun reports both ranks ended (one failed) and then never exits:
    # the launcher must end it soon, not after the failure grace, and report the failure.
    from fusecomm.runner import cli, launch, rank_wrapper

    fake = tmp_path / "mpirun"
    fake.write_text(
        "#!/bin/bash\n"
        "if [ \"$1\" = --version ]; then echo 'mpirun (Open MPI) 4.1.4'; exit 0; fi\n"
        f"echo 'rank 0 output'\n"
        f"echo '{rank_wrapper.MARKER}rank 1 exited with code 3 (failed at 100.000000)' >&2\n"
        f"echo '{rank_wrapper.END_MARKER}rank 1 code 3' >&2\n"
        f"echo '{rank_wrapper.END_MARKER}rank 0 code 0' >&2\n"
        "exec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setattr(launch, "find_mpirun", lambda: str(fake))
    started = time.monotonic()
    code = cli.main(["run", "-np", "2", "--liveness-timeout-seconds", "100", "--", "true"])
    elapsed = time.monotonic() - started
    out = capfd.readouterr()
    text = out.out + out.err
    assert code == 3, text
    # The failure grace here is 2 * 100 + 30 s; the linger limit is 10 s.
    assert elapsed < 60, f"took {elapsed:.0f} s\n{text}"
    assert "every rank has ended, mpirun has not after 10 s; ending it" in text, text
    assert "the first rank to fail: rank 1 exited with code 3" in text, text
    assert "rank 0 output" in text and rank_wrapper.END_MARKER not in text, text
