"""A rank fails before or during init(), or init() itself must fail (tests/test_fault_injection.py).
Arguments: mode, victim rank.

Modes where the victim never finishes init() (the others wait in MPI start-up for it):
  raise_before_init  the victim raises before calling init() (a missing data shard)
  kill_in_mpi_init   the victim is SIGKILLed while it waits inside MPI_Init for the others
  kill_in_comm_dup   MPI is up (mpi4py); the victim is SIGKILLed while the others duplicate
                     their communicator in init()
  never_init         the victim sleeps instead of calling init() (plain mpirun)
  kill_in_calibration
                     every rank is past the heartbeat's start, rank 0 is held inside init()
                     (FUSECOMM_CALIBRATION_FILE is a FIFO nobody writes), the victim is
                     SIGKILLed 5 s after it called init(); each survivor whose init() raises
                     prints "INIT RAISED <type>: <message>" and exits 3
Modes where init() must raise on every rank (an error that concerns one rank or a setting):
  init_error         the environment sets something init() rejects (or the third argument,
                     NAME=VALUE, is set on the victim only); each rank prints
                     "INIT RAISED <type>: <message>" and then exits 3
Modes where a rank fails after init():
  raise_in_training  the victim raises in a training loop; the others then fail too
"""
import os
import signal
import sys
import threading
import time

MODE = sys.argv[1]
VICTIM = int(sys.argv[2]) if len(sys.argv) > 2 else 1
# Before init() the launcher's variables are all a rank has to know who it is.
RANK = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))


def kill_self_after(seconds):
    def kill():
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=kill, daemon=True).start()


def main():
    if MODE == "kill_in_comm_dup":
        from mpi4py import MPI  # MPI_Init on every rank, outside fusecomm

        MPI.COMM_WORLD.Barrier()
        if RANK == VICTIM:
            os.kill(os.getpid(), signal.SIGKILL)
    import numpy as np

    import fusecomm as hvd

    if RANK == VICTIM:
        if MODE == "raise_before_init":
            raise FileNotFoundError(f"rank {RANK}: data shard {RANK} is missing")
        if MODE == "kill_in_mpi_init":
            kill_self_after(2.0)  # the others reach init() only after 5 s
        if MODE == "never_init":
            time.sleep(600)
            sys.exit(0)
    elif MODE == "kill_in_mpi_init":
        time.sleep(5.0)
    if RANK == VICTIM and MODE == "kill_in_calibration":
        kill_self_after(5.0)
    if MODE in ("init_error", "kill_in_calibration"):
        if RANK == VICTIM and len(sys.argv) > 3:
            name, value = sys.argv[3].split("=", 1)
            os.environ[name] = value
        try:
            hvd.init()
        except Exception as e:  # what kind it is, is what the test checks
            print(f"rank {RANK}: INIT RAISED {type(e).__name__}: {e}", flush=True)
            sys.exit(3)
        print(f"rank {RANK}: FAIL init() accepted the setting", flush=True)
        sys.exit(2)
    hvd.init()
    if MODE != "raise_in_training":
        print(f"rank {RANK}: FAIL init() completed without rank {VICTIM}", flush=True)
        sys.exit(2)
    x = np.ones(1000, np.float32)
    for step in range(50):
        if hvd.rank() == VICTIM and step == 10:
            raise RuntimeError(f"rank {VICTIM} fails on purpose at step {step}")
        hvd.allreduce(x, op=hvd.Sum, name=f"grad.{step % 4}")
    print(f"rank {RANK}: FAIL no error after rank {VICTIM} failed", flush=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
