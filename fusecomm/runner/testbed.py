"""`fusecomm testbed`: a cluster of N nodes on one machine, to run jobs across real TCP links.

Each node is a network namespace (`ip netns`) whose processes also get their own hostname (a UTS
namespace, made per launch by `unshare --uts`). Nodes hang off a bridge in one more namespace,
the switch, which is also where `fusecomm testbed run` starts mpirun, like a login node. Every
node's veth pair is shaped in both directions by a token bucket (`tc ... tbf`): the node's end
shapes what it sends, the switch's end what it receives. Nothing is made in the caller's
namespace, so no interface or address of the machine is touched.

Open MPI reaches a node through an rsh agent that enters its namespaces; with `routed direct`,
no tree spawn, and both the out-of-band and the TCP transport limited to the testbed's subnet,
mpirun -H node1:K,node2:K behaves as on a real cluster: ranks on a node share memory, ranks on
different nodes talk TCP over the shaped links, and MPI's shared-memory split sees N nodes.

What `up` made is recorded (before it is made) in a state file, so `down` removes all of it even
after a crash, and `up` is idempotent."""
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

STATE_DIR = os.environ.get("FUSECOMM_TESTBED_DIR", "/run/fusecomm-testbed")
STATE_FILE = os.path.join(STATE_DIR, "state.json")
AGENT_FILE = os.path.join(STATE_DIR, "rsh-agent")
DEFAULT_SUBNET = "10.213.0.0/24"
RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(k|m|g)?(bit|bps)$", re.IGNORECASE)
RATE_SCALE = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
# Open MPI settings that make its rsh launch work across namespaces (see the module docstring).
OMPI_LAUNCH_MCA = {"routed": "direct", "plm_rsh_no_tree_spawn": "1"}

# The rsh agent Open MPI calls as `agent [options] HOST COMMAND...`: COMMAND (words joined with
# spaces, as ssh does) runs in HOST's network namespace, in a new UTS namespace named HOST.
AGENT_SCRIPT = """#!/bin/sh
# Written by `fusecomm testbed up`; removed by `fusecomm testbed down`.
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
host=$1
shift
exec {ip} netns exec "$host" {unshare} --uts -- sh -c 'hostname "$0" && exec sh -c "$1"' "$host" "$*"
"""


class TestbedError(RuntimeError):
    """A testbed command cannot do what was asked; the message says why."""


def rate_bits(text):
    """Bits per second of a tc rate ("1gbit", "100mbit", "125mbps")."""
    match = RATE_RE.match(text.strip())
    if not match:
        raise TestbedError(f"bad link rate {text!r} (examples: 1gbit, 10gbit, 100mbit)")
    value = float(match.group(1)) * RATE_SCALE[(match.group(2) or "").lower()]
    return value * (8 if match.group(3).lower() == "bps" else 1)


def tbf_settings(rate):
    """tbf's bucket and queue for a link of `rate`. The bucket holds at least a full TSO/GSO
    segment (64 KiB) so large segments pass unsplit; the queue holds 20 ms of traffic so a
    burst from several senders waits instead of being dropped (a lost retransmission costs TCP
    a retransmission timeout, 200 ms doubling with every further loss: the multi-second stalls
    a real switch's buffers avoid). docs/testbed.md has the measurements."""
    bytes_per_s = rate_bits(rate) / 8
    burst = max(128 << 10, int(bytes_per_s * 0.001))
    limit = max(1 << 20, int(bytes_per_s * 0.02))
    return ["rate", rate, "burst", str(burst), "limit", str(limit)]


# ---------------------------------------------------------------------------------------------
# Checks and commands


def unavailable_reason():
    """None when this machine can make a testbed; otherwise why not (for refusals and skips)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "fusecomm testbed needs root (network namespaces, veth pairs and tc)"
    missing = [tool for tool in ("ip", "tc", "unshare") if shutil.which(tool) is None]
    if missing:
        return (f"fusecomm testbed needs {', '.join(missing)} on PATH "
                "(Debian: apt-get install iproute2 util-linux)")
    return None


def probe_namespaces():
    """None when a network namespace can actually be made here (containers may forbid it)."""
    reason = unavailable_reason()
    if reason:
        return reason
    name = f"fctb-probe-{os.getpid()}"
    made = _ip(["netns", "add", name], check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip(["netns", "delete", name], check=False)
    return None


def _run(cmd, check=True):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=60)
    if check and proc.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _ip(args, check=True):
    return _run(["ip"] + args, check)


def existing_namespaces():
    out = _ip(["netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def read_state():
    try:
        with open(STATE_FILE) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise TestbedError(f"unreadable testbed state {STATE_FILE}: {e} (remove it by hand "
                           "after deleting the namespaces it names: ip netns list)") from e


def write_state(state):
    os.makedirs(STATE_DIR, exist_ok=True)
    tmp = STATE_FILE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, STATE_FILE)


def plan(nodes, slots, link, intra_link, subnet, prefix):
    """The testbed `up` makes, as recorded in the state file."""
    if nodes < 1 or slots < 1:
        raise TestbedError("--nodes and --slots must be at least 1")
    if not re.match(r"^[a-z][a-z0-9]{0,7}$", prefix):
        raise TestbedError(f"bad prefix {prefix!r} (lower-case letters and digits, at most 8)")
    rate_bits(link)
    if intra_link != "none":
        rate_bits(intra_link)
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError as e:
        raise TestbedError(f"bad subnet {subnet!r}: {e}") from e
    if not net.is_private or net.num_addresses < nodes + 3:
        raise TestbedError(f"subnet {subnet} must be private and hold {nodes} nodes and a switch")
    hosts = list(net.hosts())
    names = [f"{prefix}{i + 1}" for i in range(nodes)]
    return {"nodes": names, "slots": slots, "link": link, "intra_link": intra_link,
            "subnet": str(net), "prefixlen": net.prefixlen,
            "addresses": {name: str(hosts[i]) for i, name in enumerate(names)},
            "switch": f"{prefix}-switch", "switch_address": str(hosts[-1])}


def namespaces_of(state):
    return [state["switch"]] + state["nodes"]


def up(nodes, slots, link="1gbit", intra_link="none", subnet=DEFAULT_SUBNET, prefix="node"):
    """Makes the testbed; a no-op when the same one is up, a rebuild when another one is."""
    reason = unavailable_reason()
    if reason:
        raise TestbedError(reason)
    wanted = plan(nodes, slots, link, intra_link, subnet, prefix)
    current = read_state()
    if current is not None:
        if current == wanted and is_complete(current):
            return "already up"
        down()
    foreign = existing_namespaces() & set(namespaces_of(wanted))
    if foreign:
        raise TestbedError(f"network namespaces {sorted(foreign)} exist and were not made by "
                           "fusecomm testbed: remove them or choose another --prefix")
    write_state(wanted)  # first, so that `down` finds whatever a failure leaves behind
    try:
        build(wanted)
    except BaseException:
        down()
        raise
    return "up"


def build(state):
    sw, bridge = state["switch"], "br0"
    _ip(["netns", "add", sw])
    _ip(["-n", sw, "link", "set", "lo", "up"])
    _ip(["-n", sw, "link", "add", bridge, "type", "bridge"])
    _ip(["-n", sw, "addr", "add", f"{state['switch_address']}/{state['prefixlen']}", "dev", bridge])
    _ip(["-n", sw, "link", "set", bridge, "up"])
    for i, node in enumerate(state["nodes"]):
        port = f"port{i + 1}"
        _ip(["netns", "add", node])
        _ip(["-n", node, "link", "set", "lo", "up"])
        # Both ends are created inside the testbed's namespaces, never in the caller's.
        _ip(["link", "add", "eth0", "netns", node, "type", "veth", "peer", "name", port,
             "netns", sw])
        _ip(["-n", sw, "link", "set", port, "master", bridge])
        _ip(["-n", sw, "link", "set", port, "up"])
        _ip(["-n", node, "addr", "add", f"{state['addresses'][node]}/{state['prefixlen']}",
             "dev", "eth0"])
        _ip(["-n", node, "link", "set", "eth0", "up"])
        shape(node, "eth0", state["link"])  # what the node sends
        shape(sw, port, state["link"])      # what it receives
        if state["intra_link"] != "none":
            # Ranks on one node then talk TCP to the node's own address, which goes over lo.
            shape(node, "lo", state["intra_link"])
    with open(AGENT_FILE, "w") as f:
        f.write(AGENT_SCRIPT.format(ip=shutil.which("ip"), unshare=shutil.which("unshare")))
    os.chmod(AGENT_FILE, 0o755)


def shape(namespace, dev, rate):
    _ip(["netns", "exec", namespace, "tc", "qdisc", "replace", "dev", dev, "root", "tbf"]
        + tbf_settings(rate))


def is_complete(state):
    return set(namespaces_of(state)) <= existing_namespaces() and os.path.exists(AGENT_FILE)


def down():
    """Removes everything `up` recorded: processes left in its namespaces (a crashed run's
    daemons and ranks), the namespaces (their veths and bridge go with them), the state."""
    state = read_state()
    if state is None:
        return "already down"
    present = existing_namespaces()
    mine = [ns for ns in namespaces_of(state) if ns in present]
    for ns in mine:
        kill_processes(ns)
    errors = [p.stderr.strip() for p in (_ip(["netns", "delete", ns], check=False) for ns in mine)
              if p.returncode != 0]
    if errors:
        raise TestbedError("could not delete every testbed namespace: " + "; ".join(errors))
    for path in (AGENT_FILE, STATE_FILE):
        if os.path.exists(path):
            os.remove(path)
    try:
        os.rmdir(STATE_DIR)
    except OSError:  # not empty: something else was put there
        pass
    return "down"


def kill_processes(namespace, grace_seconds=3.0):
    """SIGTERM then SIGKILL to every process in the namespace (all of them started in it by a
    testbed run: nothing else lives there)."""
    def pids():
        return [pid for pid, _ in processes_by_namespace([namespace])[namespace]
                if pid != os.getpid()]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_seconds
        while pids() and time.monotonic() < deadline:
            time.sleep(0.1)


def status_text():
    state = read_state()
    if state is None:
        return "testbed: down"
    present = existing_namespaces()
    lines = [f"testbed: {'up' if is_complete(state) else 'INCOMPLETE (run: fusecomm testbed down)'}"
             f", {len(state['nodes'])} nodes x {state['slots']} slots, links {state['link']}, "
             f"intra-node {state['intra_link'] if state['intra_link'] != 'none' else 'shared memory'}"
             f", subnet {state['subnet']}",
             f"hosts: {hosts_arg(state)}"]
    for ns in namespaces_of(state):
        if ns not in present:
            lines.append(f"  {ns}: missing")
            continue
        dev = "eth0" if ns != state["switch"] else "br0"
        addr = state["addresses"].get(ns, state["switch_address"])
        procs = len(processes_by_namespace([ns])[ns])
        lines.append(f"  {ns}: {addr} on {dev}, {procs} processes")
        qdisc = _ip(["netns", "exec", ns, "tc", "-s", "qdisc", "show"], check=False).stdout
        shaper = False  # inside a tbf block: its first line, then its counters
        for qline in qdisc.splitlines():
            if qline.startswith("qdisc"):
                shaper = qline.startswith("qdisc tbf")
            if shaper and (qline.startswith("qdisc") or "Sent" in qline):
                lines.append("    " + qline.strip())
    return "\n".join(lines)


def hosts_arg(state):
    return ",".join(f"{node}:{state['slots']}" for node in state["nodes"])


def processes_by_namespace(namespaces):
    """{namespace: [(pid, command name)]} for the given network namespaces."""
    inode_of = {os.stat(f"/run/netns/{ns}").st_ino: ns for ns in namespaces}
    found = {ns: [] for ns in namespaces}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = inode_of.get(os.stat(f"/proc/{entry}/ns/net").st_ino)
            if ns is not None:
                with open(f"/proc/{entry}/comm") as f:
                    found[ns].append((int(entry), f.read().strip()))
        except OSError:  # the process ended meanwhile
            continue
    return found


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser):
    from fusecomm.runner import launch

    sub = parser.add_subparsers(dest="testbed_action", required=True)
    up_parser = sub.add_parser("up", help="make (or keep) a testbed of N nodes x K slots")
    up_parser.add_argument("--nodes", type=int, required=True)
    up_parser.add_argument("--slots", type=int, required=True, help="ranks per node")
    up_parser.add_argument("--link", default="1gbit",
                           help="rate of each node's link, both directions (tc rate: 1gbit)")
    up_parser.add_argument("--intra-link", default="none",
                           help="none: ranks on a node share memory; a rate: they talk TCP over "
                                "the node's loopback, shaped to it")
    up_parser.add_argument("--subnet", default=DEFAULT_SUBNET,
                           help="private subnet inside the testbed's namespaces")
    up_parser.add_argument("--prefix", default="node", help="node names: PREFIX1, PREFIX2, ...")
    sub.add_parser("status", help="what is up, with each link's shaping and counters")
    sub.add_parser("down", help="remove the testbed (also after a crashed run)")
    run_parser = sub.add_parser("run", help="fusecomm run across the testbed's nodes")
    launch.add_arguments(run_parser)


def main(args):
    try:
        if args.testbed_action == "run":
            from fusecomm.runner import testbed_launch

            return testbed_launch.run(args)
        if args.testbed_action == "status":
            print(status_text())
            return 0 if read_state() else 1
        reason = unavailable_reason()
        if reason:
            raise TestbedError(reason)
        if args.testbed_action == "up":
            result = up(args.nodes, args.slots, args.link, args.intra_link, args.subnet,
                        args.prefix)
            print(f"testbed {result}")
            print(status_text())
        else:
            print(f"testbed {down()}")
        return 0
    except TestbedError as e:
        print(f"fusecomm testbed: {e}", file=sys.stderr)
        return 2
