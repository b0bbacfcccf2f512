"""The `fusecomm` command: run (wraps mpirun), check-build, bench."""
