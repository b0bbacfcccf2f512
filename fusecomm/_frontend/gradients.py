"""Horovod 0.28.1's gradient rules for the collectives, written once: the torch autograd
Functions (fusecomm/torch/mpi_ops.py) and the TensorFlow custom gradients
(fusecomm/tensorflow/mpi_ops.py) both read backward_rule(), so their conventions cannot drift.

Each rule says which collective carries the incoming gradient back, with which reduce op and
scales, what it is multiplied by, and which part this rank keeps:

| forward        | backward collective                  | then                                  |
|----------------|--------------------------------------|---------------------------------------|
| allreduce(op)  | allreduce, same op and scales        | -                                     |
| allgather      | allreduce, Average                   | keep the rows this rank contributed   |
| broadcast      | allreduce, Average                   | keep on the root, zero elsewhere      |
| reducescatter  | allgather                            | times size (Sum) and the scales       |
| alltoall       | alltoall with the received splits    | -                                     |

Only Sum and Average have gradients among the reduce ops (Min/Max/Product: NotImplementedError).
"""
from collections import namedtuple

from fusecomm._engine import (ALLGATHER, ALLREDUCE, ALLTOALL, BROADCAST, OP_NAMES,
                              REDUCESCATTER, Average, Sum)

# What each rank keeps of the backward collective's result.
KEEP_ALL, KEEP_OWN_ROWS, KEEP_ON_ROOT = "all", "own_rows", "on_root"

BackwardRule = namedtuple("BackwardRule", "collective op prescale postscale multiplier keep")


def _allreduce_rule(op, prescale, postscale, size):
    return BackwardRule(ALLREDUCE, op, prescale, postscale, 1.0, KEEP_ALL)


def _averaged_rule(keep):
    return lambda op, prescale, postscale, size: BackwardRule(ALLREDUCE, Average, 1.0, 1.0, 1.0,
                                                              keep)


def _reducescatter_rule(op, prescale, postscale, size):
    multiplier = (size if op == Sum else 1) * prescale * postscale
    return BackwardRule(ALLGATHER, None, 1.0, 1.0, multiplier, KEEP_ALL)


def _alltoall_rule(op, prescale, postscale, size):
    return BackwardRule(ALLTOALL, None, 1.0, 1.0, 1.0, KEEP_ALL)


RULES = {
    ALLREDUCE: _allreduce_rule,
    ALLGATHER: _averaged_rule(KEEP_OWN_ROWS),
    BROADCAST: _averaged_rule(KEEP_ON_ROOT),
    REDUCESCATTER: _reducescatter_rule,
    ALLTOALL: _alltoall_rule,
}

_REDUCING = (ALLREDUCE, REDUCESCATTER)


def backward_rule(op_type, op=Sum, prescale=1.0, postscale=1.0, size=1):
    """The BackwardRule of a forward collective (`size`: its process set's size)."""
    if op_type in _REDUCING and op not in (Sum, Average):
        raise NotImplementedError(f"the gradient of {OP_NAMES[op_type]} is defined for Sum and "
                                  "Average only, not op=Min/Max/Product")
    return RULES[op_type](op, prescale, postscale, size)


def own_row_offsets(row_counts, rank_in_set):
    """Where this rank's rows start in each allgathered tensor: row_counts[r][k] is rank r's
    row count of tensor k (an allgather of every rank's counts)."""
    return [sum(int(row_counts[r][k]) for r in range(rank_in_set))
            for k in range(len(row_counts[0]))]


def sparse_scale(op, size, prescale=1.0, postscale=1.0):
    """The factor on gathered sparse values (allgathered indices and values sum once the
    duplicates are added): the scales, and 1/size for Average."""
    if op not in (Sum, Average):
        raise NotImplementedError("sparse gradients (torch sparse tensors, tf.IndexedSlices: "
                                  "gathered indices and values) support only Sum and Average; "
                                  "use sparse_as_dense=True for other ops")
    return prescale * postscale / (size if op == Average else 1)
