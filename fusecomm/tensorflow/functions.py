"""Helpers over the ops: broadcasting variables and Python objects."""
from fusecomm.basics import global_process_set
from fusecomm.ops import allgather_object, broadcast_object  # noqa: F401  (Python objects)
from fusecomm.tensorflow.mpi_ops import broadcast_


def broadcast_variables(variables, root_rank, process_set=global_process_set, inplace=False):
    """Gives every variable (tf.Variable or keras.Variable) root_rank's value. All variables
    travel as one batch. `inplace` is accepted for Horovod scripts; the assignment is always
    in place."""
    del inplace
    variables = list(variables)
    if variables:
        broadcast_(variables, root_rank, name=None, process_set=process_set)
