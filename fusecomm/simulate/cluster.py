"""The simulated cluster: nodes of GPUs (ranks), the links between them, and the α-β model
fusecomm's `auto` selector would calibrate on it.

Links, as the event model uses them:
- every rank has its own port into the node's fabric (NVLink/NVSwitch, or shared memory):
  `alpha_intra` seconds per message, `beta_intra` seconds per byte, one send and one receive at
  a time;
- every node has one network interface (NIC), full duplex, `beta_inter` seconds per byte for
  the whole node: flows leaving (or entering) one node at once share it; one flow alone may be
  slower than the NIC (`alpha_flow`, `beta_flow`: a TCP stream on a CPU, a GPU's PCIe path) —
  by default it is not;
- `gamma` seconds per byte reduced.

The CPU (all of it charged to the core the rank runs on):
- `gamma` is CPU work: a receiver reduces a segment only once its core is free of the previous
  one;
- `copy_beta_intra`, `copy_beta_inter`: seconds per byte a rank's CPU spends moving a byte it
  sends or receives inside the node (shared memory: memcpy, about β_intra itself) or across
  nodes (the TCP stack): a transfer goes no faster than the slower of its two ends' CPUs drives
  it;
- `call_overhead` seconds of software per all-reduce call (the engine's cycle, negotiation,
  copies into the fusion buffer) before the first message;
- `cores_per_node`: cores the node's ranks share (None: one core per rank at least). With more
  ranks than cores, every rank's CPU work runs ranks/cores times slower. It may be fractional:
  `fusecomm testbed`'s nodes are namespaces of one machine, so 4 of them on 2 cores have 0.5.

fusecomm's calibration at init (csrc/collectives/cost_model.cc, printed by `fusecomm bench
calibrate`, cached with FUSECOMM_CALIBRATION_FILE) measures different things: its inter-node β
comes from every local rank's cross-node ring running at once, so it is the per-flow price with
`gpus_per_node` flows sharing each NIC. `from_calibration` divides it back to the NIC's own rate,
and `selector_model` multiplies it again, so a file read and written round-trips.
"""
import dataclasses
import math

import numpy as np

# CostModel's defaults (csrc/collectives/cost_model.h): what fusecomm predicts with before it has
# calibrated, and what `fusecomm simulate` uses unless told otherwise.
DEFAULT_ALPHA = 5e-6
DEFAULT_BETA = 2e-10
DEFAULT_GAMMA = 1e-10
# kDefaultSegmentBytes (csrc/collectives/allreduce.h): every algorithm moves messages of at most
# this size so that receiving the next segment overlaps reducing or forwarding this one.
DEFAULT_SEGMENT_BYTES = 512 << 10

CALIBRATION_FIELDS = ("alpha_intra", "beta_intra", "alpha_inter", "beta_inter", "alpha_ring",
                      "beta_ring", "gamma", "native_small", "native_mid", "native_large")


@dataclasses.dataclass(frozen=True)
class SelectorModel:
    """fusecomm's CostModel: the link classes as calibration measures them (see docs/algorithms.md,
    "How auto chooses")."""
    alpha_intra: float
    beta_intra: float
    alpha_inter: float
    beta_inter: float
    alpha_ring: float
    beta_ring: float
    gamma: float
    native_small: float = 5e-6
    native_mid: float = 5e-5
    native_large: float = 5e-4

    def to_text(self):
        return "".join(f"{name} {getattr(self, name):.6g}\n" for name in CALIBRATION_FIELDS)

    @classmethod
    def from_text(cls, text):
        values = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in CALIBRATION_FIELDS:
                values[parts[0]] = float(parts[1])
        missing = [name for name in CALIBRATION_FIELDS if name not in values]
        if missing:
            raise ValueError(f"calibration text lacks {', '.join(missing)} (expected the lines "
                             f"`fusecomm bench calibrate` prints: NAME VALUE)")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    alpha_intra: float = DEFAULT_ALPHA
    beta_intra: float = DEFAULT_BETA
    alpha_inter: float = DEFAULT_ALPHA
    beta_inter: float = DEFAULT_BETA
    gamma: float = DEFAULT_GAMMA
    alpha_flow: float = None  # one flow alone across nodes (None: alpha_inter)
    beta_flow: float = None  # one flow alone across nodes, at best (None: beta_inter)
    segment_bytes: int = DEFAULT_SEGMENT_BYTES  # 0: whole messages, no pipelining
    nic_contention: bool = True  # flows through one node's NIC share its rate
    ranks_override: int = 0  # fewer ranks than nodes * gpus_per_node: the last node is partial
    calibration: SelectorModel = None  # what fusecomm measured, when built from a file
    cores_per_node: float = None  # None: unlimited (a core per rank at least)
    copy_beta_intra: float = 0.0  # CPU seconds per byte sent or received inside the node
    copy_beta_inter: float = 0.0  # ... across nodes
    call_overhead: float = 0.0  # CPU seconds per all-reduce call

    def __post_init__(self):
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(f"a cluster needs at least one node of one GPU, got "
                             f"{self.nodes} x {self.gpus_per_node}")
        for name in ("alpha_intra", "beta_intra", "alpha_inter", "beta_inter", "gamma",
                     "alpha_flow", "beta_flow", "copy_beta_intra",
                     "copy_beta_inter", "call_overhead"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cores_per_node is not None and not self.cores_per_node > 0:
            raise ValueError(f"cores_per_node must be > 0 (or None: unlimited), got "
                             f"{self.cores_per_node}")
        if self.ranks_override and not (
                (self.nodes - 1) * self.gpus_per_node < self.ranks_override
                <= self.nodes * self.gpus_per_node):
            raise ValueError(f"{self.ranks_override} ranks do not fit {self.nodes} nodes of "
                             f"{self.gpus_per_node} with only the last one partial")

    @classmethod
    def for_ranks(cls, ranks, gpus_per_node, **links):
        """`ranks` GPUs on nodes of `gpus_per_node` (the last node holds the remainder)."""
        if ranks < 1:
            raise ValueError(f"ranks must be >= 1, got {ranks}")
        nodes = math.ceil(ranks / gpus_per_node)
        override = ranks if ranks != nodes * gpus_per_node else 0
        return cls(nodes=nodes, gpus_per_node=gpus_per_node, ranks_override=override, **links)

    @property
    def single_flow(self):
        """(α, β) of one flow alone across nodes."""
        return (self.alpha_inter if self.alpha_flow is None else self.alpha_flow,
                self.beta_inter if self.beta_flow is None else max(self.beta_flow,
                                                                   self.beta_inter))

    @property
    def ranks(self):
        return self.ranks_override or self.nodes * self.gpus_per_node

    @property
    def node_sizes(self):
        sizes = [self.gpus_per_node] * self.nodes
        sizes[-1] = self.ranks - (self.nodes - 1) * self.gpus_per_node
        return sizes

    def cpu_slowdown(self):
        """Per rank: how many times slower its CPU work runs (its node's ranks per core, at
        least 1)."""
        per_node = [1.0 if self.cores_per_node is None else max(1.0, k / self.cores_per_node)
                    for k in self.node_sizes]
        return np.repeat(per_node, self.node_sizes)

    @property
    def homogeneous(self):
        return len(set(self.node_sizes)) == 1

    def with_ranks(self, ranks):
        """The same links with another number of GPUs (for sweeps over scale)."""
        fields = dataclasses.asdict(self)
        fields.pop("nodes"), fields.pop("ranks_override"), fields.pop("gpus_per_node")
        fields["calibration"] = self.calibration
        return Cluster.for_ranks(ranks, self.gpus_per_node, **fields)

    def selector_model(self):
        """The CostModel fusecomm's `auto` would hold on this cluster: the file's values when the
        cluster came from one, else what calibration would measure on these links."""
        if self.calibration is not None:
            return self.calibration
        k = min(self.gpus_per_node, self.ranks)
        if self.nodes <= 1:  # one node: the global ring is the intra class, inter copies it
            return SelectorModel(self.alpha_intra, self.beta_intra, self.alpha_intra,
                                 self.beta_intra, self.alpha_intra, self.beta_intra, self.gamma)
        # The cross-node rings run k flows per NIC at once; the global ring one flow per node
        # boundary, at the pace of the slower link.
        alpha_one, beta_one = self.single_flow
        return SelectorModel(self.alpha_intra, self.beta_intra, self.alpha_inter,
                             max(beta_one, self.beta_inter * (k if self.nic_contention else 1)),
                             max(self.alpha_intra, alpha_one),
                             max(self.beta_intra, beta_one), self.gamma)

    @classmethod
    def from_calibration(cls, text, nodes, gpus_per_node, ranks=None, **options):
        """A cluster whose links are those fusecomm calibrated (`text`: the calibration file's
        contents), scaled out to `nodes` x `gpus_per_node` (or `ranks`) of the same kind."""
        model = SelectorModel.from_text(text)
        k = gpus_per_node
        links = dict(alpha_intra=model.alpha_intra, beta_intra=model.beta_intra,
                     alpha_inter=model.alpha_inter, beta_inter=model.beta_inter / k,
                     alpha_flow=model.alpha_ring, beta_flow=model.beta_ring,
                     gamma=model.gamma, calibration=model, **options)
        if ranks is None:
            ranks = nodes * gpus_per_node
        return cls.for_ranks(ranks, gpus_per_node, **links)

    def to_calibration(self):
        """The calibration file fusecomm would write on this cluster (FUSECOMM_CALIBRATION_FILE)."""
        return self.selector_model().to_text()

    def describe(self):
        cores = ("unlimited cores" if self.cores_per_node is None
                 else f"{self.cores_per_node:g} cores")
        return (f"{self.ranks} GPUs = {self.nodes} nodes x {self.gpus_per_node}; intra "
                f"α={self.alpha_intra:.3g}s β={self.beta_intra:.3g}s/B; "
                f"NIC α={self.alpha_inter:.3g}s "
                f"β={self.beta_inter:.3g}s/B; γ={self.gamma:.3g}s/B; segments "
                f"{self.segment_bytes or 'off'}; CPU: "
                f"{cores}/node, copy {self.copy_beta_intra:.3g}/"
                f"{self.copy_beta_inter:.3g}s/B, {self.call_overhead:.3g}s/call")


def link_beta(rate):
    """Seconds per byte of a link given as '100gbit', '10gbit', '1gbit', '100GB/s', '12.5GBps'."""
    text = rate.strip().lower().replace("/s", "ps")
    units = {"gbit": 1e9 / 8, "mbit": 1e6 / 8, "gbps": 1e9, "mbps": 1e6, "gb": 1e9, "mb": 1e6}
    for suffix, scale in units.items():
        if text.endswith(suffix):
            return 1.0 / (float(text[:-len(suffix)]) * scale)
    raise ValueError(f"link rate {rate!r}: expected e.g. 100gbit, 1gbit, 100GB/s")


# A V100-era cluster (DGX-1 class; the kind Goyal et al. and Mikami et al. ran on, with EDR
# InfiniBand):
# - intra: NVLink at ~100 GB/s per GPU for the ring-style neighbour exchanges NCCL uses
#   (DGX-1: 6 NVLink2 links of 25 GB/s per direction, ~130 GB/s in NCCL's rings), α ≈ 5 µs
#   (a CUDA kernel launch plus NCCL's protocol step);
# - inter: one 100 Gbit/s EDR InfiniBand NIC per node (12.5 GB/s), α ≈ 5 µs (MPI/NCCL over
#   verbs at scale: 1-2 µs of wire latency plus software);
# - γ: reduction at HBM2 bandwidth (~900 GB/s reading two operands, writing one: ~1e-12 s/B).
V100_EDR = dict(alpha_intra=5e-6, beta_intra=1e-11, alpha_inter=5e-6, beta_inter=8e-11,
                gamma=1e-12)
PRESETS = {"default": {}, "v100-edr": V100_EDR}
