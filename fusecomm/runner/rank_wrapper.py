"""Runs one rank's command under `fusecomm run` and reports how it ended.

mpirun forwards each rank's output, so a marker line on stderr reaches the launcher from any
host; the launcher reads the markers to say which rank failed first and to exit non-zero.

Markers arrive in no useful order: a rank that fails because a peer failed often exits first
(the peer is still tearing down). So each marker carries the time the rank's failure began:
fusecomm reports, through a pipe whose descriptor is in FUSECOMM_RUN_REPORT_FD, the moment the
process started to exit, which is before it tells any peer it is leaving; without a report
(killed, or not a fusecomm program) the time the process ended counts. A failure caused by a
peer's is therefore always later than that peer's. Where fusecomm knows a failure was caused by
another rank's (init() failed because of a setting on rank R), it reports that too, and the
launcher prefers the ranks whose failures were their own."""
import os
import re
import signal
import subprocess
import sys
import time

MARKER = "[fusecomm run] "
# Printed by every rank's wrapper when its command has ended, however it ended, with its exit
# status; the launcher counts these (and does not pass them on) to know when the whole job is
# over, and reads the status from them because mpirun under --enable-recovery exits 0 even when
# a rank failed. mpirun can glue another rank's output right after one, so the pattern ends
# at the number.
END_MARKER = "[fusecomm run:end] "
END_MARKER_PATTERN = re.compile(r"\[fusecomm run:end\] rank (\d+|\?) code (-?\d+)")
REPORT_FD_VARIABLE = "FUSECOMM_RUN_REPORT_FD"


def exit_status(marker_text):
    """The exit status a shell would report for the rank a marker describes (other ranks'
    output may be glued to the marker's line, so only the numbers right after count)."""
    code = re.search(r"exited with code (-?\d+)", marker_text)
    if code:
        return int(code.group(1))
    sig = re.search(r"killed by signal (\d+)", marker_text)
    return 128 + int(sig.group(1)) if sig else None


def failure_time(marker_text):
    """When the failure a marker describes began (seconds since the epoch), or None."""
    found = re.search(r"\(failed at (\d+\.\d+)", marker_text)
    return float(found.group(1)) if found else None


def caused_by(marker_text):
    """The rank whose failure caused the one a marker describes, when fusecomm knew it."""
    found = re.search(r"\(failed at \d+\.\d+, after rank (\d+) failed\)", marker_text)
    return int(found.group(1)) if found else None


def without_time(marker_text):
    return re.sub(r" \(failed at \d+\.\d+(, after rank \d+ failed)?\).*", "", marker_text)


def rank_id():
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if name in os.environ:
            return os.environ[name]
    return "?"


def report_exit_started():
    """Called by fusecomm in the rank when its process begins to exit (see the module doc)."""
    _report(f"exit {time.time():.6f}")


def report_caused_by(rank):
    """Called by fusecomm in the rank when it fails because rank `rank` did."""
    _report(f"after {int(rank)}")


def _report(line):
    fd = os.environ.get(REPORT_FD_VARIABLE)
    if not fd:
        return
    try:
        os.write(int(fd), (line + "\n").encode())
    except (OSError, ValueError):
        # The program closed the descriptor or is a child that did not inherit it: the launcher
        # falls back to the time the process ended.
        return


def _read_reports(read_fd):
    """(time the rank reported it began to exit, rank it blamed), each None if not reported;
    read without waiting (a child of the rank may still hold the pipe open)."""
    os.set_blocking(read_fd, False)
    try:
        text = os.read(read_fd, 4096).decode(errors="replace")
    except BlockingIOError:
        text = ""
    exit_at = re.search(r"^exit (\d+\.\d+)$", text, re.M)
    blamed = re.search(r"^after (\d+)$", text, re.M)
    return (float(exit_at.group(1)) if exit_at else None,
            int(blamed.group(1)) if blamed else None)


def _marker(text, failed_at, blamed=None):
    cause = f", after rank {blamed} failed" if blamed is not None else ""
    print(f"{MARKER}rank {rank_id()} {text} (failed at {failed_at:.6f}{cause})", file=sys.stderr,
          flush=True)


def _end_marker(code):
    print(f"{END_MARKER}rank {rank_id()} code {code}", file=sys.stderr, flush=True)


def take_end_markers(line):
    """(the {rank: exit status} of the end markers in `line`, the line without them)."""
    ends = {rank: int(code) for rank, code in END_MARKER_PATTERN.findall(line)}
    if not ends:
        return ends, line
    rest = END_MARKER_PATTERN.sub("", line)
    return ends, rest if rest.strip() else ""


def main(argv):
    code = 1  # what Python exits with if the wrapper itself fails
    try:
        code = _run_rank(argv)
        return code
    finally:
        _end_marker(code)


def _run_rank(argv):
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, **{REPORT_FD_VARIABLE: str(write_fd)})
    try:
        proc = subprocess.Popen(argv, pass_fds=(write_fd,), env=env)
    except OSError as e:
        # The shell's statuses: 127 not found, 126 found but not runnable.
        code = 127 if isinstance(e, FileNotFoundError) else 126
        _marker(f"could not start {argv[0]!r}: {e.strerror}; exited with code {code}", time.time())
        return code
    finally:
        os.close(write_fd)

    def forward(signum, _frame):
        proc.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    code = proc.wait()
    ended = time.time()
    reported, blamed = _read_reports(read_fd)
    os.close(read_fd)
    failed_at = min(reported, ended) if reported is not None else ended
    if code < 0:
        name = signal.Signals(-code).name
        _marker(f"was killed by signal {-code} ({name})", failed_at, blamed)
        return 128 - code
    if code != 0:
        _marker(f"exited with code {code}", failed_at, blamed)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
