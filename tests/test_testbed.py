"""`fusecomm testbed`: 2 nodes x 2 slots of network namespaces on this machine, 1 Gbit/s links.

Jobs launched with `fusecomm testbed run` go through `fusecomm run`; ranks on different nodes
talk TCP over the shaped links. Every collective and every all-reduce algorithm must be correct
there, fusecomm must see 2 nodes, a rank killed on one node must be reported by name on the
other, and long transfers across the slow links must not be taken for a death.

The test uses its own node names, subnet and state directory, so it never touches a testbed
someone else has up, and always tears its own down. It skips, saying why, where namespaces
cannot be made (not root, no iproute2, a container without CAP_SYS_ADMIN)."""
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import MP_DIR, mpi_env
from fusecomm.runner import cli, testbed

NODES, SLOTS = 2, 2
PREFIX, SUBNET = "tbt", "10.213.1.0/24"
STATE_DIR = "/run/fusecomm-testbed-test"
RANKS = NODES * SLOTS


def cli_env(extra=None):
    env = mpi_env(extra)
    env.pop("FUSECOMM_LOCAL_SIZE", None)  # the topology must come from the testbed itself
    env["FUSECOMM_TESTBED_DIR"] = STATE_DIR
    return env


def fusecomm_cli(*args, env=None, timeout=120):
    """Runs the `fusecomm` command (installed package, by file path); returns (code, output)."""
    cmd = [sys.executable, cli.__file__, *map(str, args)]
    try:
        proc = subprocess.run(cmd, env=cli_env(env), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"fusecomm {' '.join(map(str, args))} did not finish in {timeout}s (hang)\n"
                    f"{out[-6000:]}")
    return proc.returncode, proc.stdout


def run_on_testbed(script, *args, env=None, timeout=240, expect_fail=False):
    code, out = fusecomm_cli("testbed", "run", "-np", RANKS, "--", sys.executable,
                             MP_DIR / script, *args, env=env, timeout=timeout)
    if not expect_fail and code != 0:
        pytest.fail(f"{script} on the testbed exited {code}\n{out[-8000:]}")
    return code, out


def caller_links():
    out = subprocess.run(["ip", "-o", "link", "show"], stdout=subprocess.PIPE, text=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def node_sent_bytes(node, dev="eth0"):
    """Bytes the node has sent through a shaped device (tbf's counter)."""
    out = subprocess.run(["ip", "netns", "exec", node, "tc", "-s", "qdisc", "show", "dev",
                          dev], stdout=subprocess.PIPE, text=True).stdout
    return int(re.search(r"Sent (\d+) bytes", out).group(1))


@pytest.fixture(scope="module")
def cluster():
    reason = testbed.probe_namespaces()
    if reason:
        pytest.skip(reason)
    links_before = caller_links()
    code, out = fusecomm_cli("testbed", "up", "--nodes", NODES, "--slots", SLOTS, "--link",
                             "1gbit", "--prefix", PREFIX, "--subnet", SUBNET)
    try:
        assert code == 0, out
        assert caller_links() == links_before, "testbed up changed the caller's interfaces"
        yield [f"{PREFIX}{i + 1}" for i in range(NODES)]
    finally:
        code, out = fusecomm_cli("testbed", "down")
        left = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
        assert code == 0, out
        assert not re.search(rf"^{PREFIX}", left, re.MULTILINE), f"namespaces left:\n{left}"
        assert not os.path.exists(STATE_DIR), "down left its state directory"
        assert caller_links() == links_before


def test_up_is_idempotent_and_status_shows_the_shaping(cluster):
    code, out = fusecomm_cli("testbed", "up", "--nodes", NODES, "--slots", SLOTS, "--link",
                             "1gbit", "--prefix", PREFIX, "--subnet", SUBNET)
    assert code == 0 and "testbed already up" in out, out
    code, out = fusecomm_cli("testbed", "status")
    assert code == 0, out
    assert f"hosts: {PREFIX}1:{SLOTS},{PREFIX}2:{SLOTS}" in out, out
    for node in cluster:
        assert re.search(rf"{node}: 10\.213\.1\.\d+ on eth0", out), out
    # Each node's link is shaped at both ends: its own eth0 and its switch port.
    assert out.count("qdisc tbf") == 2 * NODES and "rate 1Gbit" in out, out


def test_refuses_what_it_cannot_do(cluster):
    code, out = fusecomm_cli("testbed", "run", "-np", RANKS + 1, "--", "true")
    assert code != 0 and f"exceeds the testbed's {RANKS} slots" in out, out
    code, out = fusecomm_cli("testbed", "run", "-np", 2, "-H", "localhost:2", "--", "true")
    assert code != 0 and "-H is not allowed" in out, out
    code, out = fusecomm_cli("testbed", "up", "--nodes", 2, "--slots", 2, "--link", "fast",
                             "--prefix", PREFIX, "--subnet", SUBNET)
    assert code != 0 and "bad link rate 'fast'" in out, out


def test_topology_is_two_nodes(cluster):
    _, out = run_on_testbed("testbed_topology.py", NODES, SLOTS, PREFIX, timeout=120)
    assert out.count(": OK on ") == RANKS, out


def test_every_collective_across_tcp(cluster):
    sent = {node: node_sent_bytes(node) for node in cluster}
    _, out = run_on_testbed("core_collectives.py", 11)
    assert out.count("OK") >= RANKS, out
    # The 65537-element all-reduces alone move far more than this over each node's link.
    for node in cluster:
        assert node_sent_bytes(node) - sent[node] > 1 << 20, f"{node} sent nothing over TCP"


def test_every_allreduce_algorithm_across_tcp(cluster):
    _, out = run_on_testbed("core_algorithms.py", 12)
    assert out.count(": OK (") == RANKS, out
    assert out.count(f"local_size {SLOTS}") == RANKS, out


def test_rank_killed_on_one_node_is_named_on_the_other(cluster):
    victim = SLOTS  # the first rank of the second node
    code, out = run_on_testbed("fault_rank_death.py", "kill", victim, expect_fail=True,
                            env={"FUSECOMM_LIVENESS_TIMEOUT_SECONDS": "5"}, timeout=120)
    assert code != 0, out
    for rank in range(SLOTS):  # the first node's ranks
        assert re.search(rf"rank {rank}: DETECTED after [\d.]+s: .*rank {victim} stopped "
                         "responding", out), out
    assert f"the first rank to fail: rank {victim} was killed by signal 9" in out, out


def test_long_transfers_are_not_a_death(cluster):
    """16 MiB all-reduces across the 1 Gbit/s links for three times the liveness timeout."""
    env = {"FUSECOMM_LIVENESS_TIMEOUT_SECONDS": "5"}
    # The ring puts the most bytes on the links: 2(p-1)/p of the buffer per node and step.
    _, out = run_on_testbed("testbed_bulk.py", "busy", 15, "ring", env=env, timeout=180)
    assert out.count(": OK ") == RANKS, out


def test_rank_killed_during_long_transfers_is_found(cluster):
    victim = SLOTS
    code, out = run_on_testbed("testbed_bulk.py", "kill", 12, "ring", victim, expect_fail=True,
                            env={"FUSECOMM_LIVENESS_TIMEOUT_SECONDS": "5"}, timeout=180)
    assert code != 0, out
    for rank in range(RANKS):
        if rank != victim:
            assert re.search(rf"rank {rank}: DETECTED after .*rank {victim} stopped responding",
                             out), out


def test_down_after_a_crashed_run(cluster):
    """The launcher dies (SIGKILL) with a job running: mpirun, the daemons and the ranks are left
    in the testbed's namespaces; `down` still removes every one of them and the namespaces."""
    namespaces = cluster + [f"{PREFIX}-switch"]
    job = subprocess.Popen([sys.executable, cli.__file__, "testbed", "run", "-np", str(RANKS),
                            "--", sys.executable, "-c", "import time; time.sleep(600)"],
                           env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:  # until every node runs its daemon and its ranks
            procs = testbed.processes_by_namespace(namespaces)
            if all(len(procs[node]) > SLOTS for node in cluster):
                break
            assert time.monotonic() < deadline, f"the job did not start: {procs}"
            time.sleep(0.5)
    finally:
        job.kill()
        job.wait()
    left = [pid for plist in testbed.processes_by_namespace(namespaces).values()
            for pid, _ in plist]
    assert left, "nothing was left behind to clean up"
    code, out = fusecomm_cli("testbed", "down")
    assert code == 0 and "testbed down" in out, out
    gone = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
    assert not re.search(rf"^{PREFIX}", gone, re.MULTILINE), gone
    for pid in left:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            assert state == "Z", f"process {pid} survived down (state {state})"
        except FileNotFoundError:
            pass


def test_intra_link_shapes_the_nodes_loopback(cluster):
    """--intra-link RATE: ranks on one node talk TCP over the node's loopback, shaped to RATE
    (runs last: it makes the module's testbed again with that setting)."""
    code, out = fusecomm_cli("testbed", "up", "--nodes", NODES, "--slots", SLOTS, "--link",
                             "1gbit", "--intra-link", "2gbit", "--prefix", PREFIX, "--subnet",
                             SUBNET)
    assert code == 0 and "intra-node" in out and "dev lo" in out, out
    sent = {node: node_sent_bytes(node, "lo") for node in cluster}
    _, out = run_on_testbed("testbed_topology.py", NODES, SLOTS, PREFIX, timeout=120)
    assert out.count(": OK on ") == RANKS, out
    for node in cluster:
        assert node_sent_bytes(node, "lo") > sent[node], f"nothing went over {node}'s loopback"


def test_refuses_without_root_or_tools(monkeypatch, capsys):
    """Runs everywhere (no testbed needed): the refusals name what is missing."""
    monkeypatch.setattr(testbed.os, "geteuid", lambda: 1000)
    assert cli.main(["testbed", "up", "--nodes", "2", "--slots", "2"]) == 2
    assert "fusecomm testbed needs root" in capsys.readouterr().err
    assert cli.main(["testbed", "down"]) == 2
    assert "needs root" in capsys.readouterr().err
    monkeypatch.setattr(testbed.os, "geteuid", lambda: 0)
    monkeypatch.setattr(testbed.shutil, "which",
                        lambda tool: None if tool == "tc" else f"/usr/sbin/{tool}")
    with pytest.raises(testbed.TestbedError, match=r"needs tc on PATH"):
        testbed.up(2, 2)
