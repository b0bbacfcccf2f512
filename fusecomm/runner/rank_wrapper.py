"""Runs one rank's command under `fusecomm run` and reports how it ended.

mpirun forwards each rank's output, so a marker line on stderr reaches the launcher from any
host; the launcher reads the markers to say which rank failed first and to exit non-zero."""
import os
import re
import signal
import subprocess
import sys

MARKER = "[fusecomm run] "


def exit_status(marker_text):
    """The exit status a shell would report for the rank a marker describes (other ranks'
    output may be glued to the marker's line, so only the numbers right after count)."""
    code = re.search(r"exited with code (-?\d+)", marker_text)
    if code:
        return int(code.group(1))
    sig = re.search(r"killed by signal (\d+)", marker_text)
    return 128 + int(sig.group(1)) if sig else None


def rank_id():
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if name in os.environ:
            return os.environ[name]
    return "?"


def main(argv):
    proc = subprocess.Popen(argv)

    def forward(signum, _frame):
        proc.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    code = proc.wait()
    if code < 0:
        name = signal.Signals(-code).name
        print(f"{MARKER}rank {rank_id()} was killed by signal {-code} ({name})", file=sys.stderr,
              flush=True)
        return 128 - code
    if code != 0:
        print(f"{MARKER}rank {rank_id()} exited with code {code}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
