"""Entry point of the `fusecomm` command."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fusecomm", description="fusecomm job launcher and tools")
    sub = parser.add_subparsers(dest="action", required=True)

    from fusecomm.runner import launch

    run_parser = sub.add_parser("run", help="run a command on N ranks with mpirun")
    launch.add_arguments(run_parser)
    sub.add_parser("check-build", help="print what this build of fusecomm supports")
    bench_parser = sub.add_parser("bench", help="benchmarks")
    from fusecomm.runner import bench

    bench.add_arguments(bench_parser)
    from fusecomm.runner import testbed

    testbed.add_arguments(sub.add_parser(
        "testbed", help="a cluster of nodes on this machine (network namespaces, shaped links)"))
    from fusecomm.simulate import cli as simulate_cli

    simulate_cli.add_arguments(sub.add_parser(
        "simulate", help="predict all-reduce and training-step communication on a cluster"))

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.action == "run":
        return launch.run(args)
    if args.action == "check-build":
        from fusecomm.runner import check_build

        print(check_build.report())
        return 0
    if args.action == "testbed":
        return testbed.main(args)
    if args.action == "simulate":
        return simulate_cli.main(args)
    return bench.run(args)


if __name__ == "__main__":
    sys.exit(main())
