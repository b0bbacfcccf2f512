"""Helpers over the ops: broadcasting variables and Python objects, and Horovod's TF1 API for
graph-mode (tf.compat.v1 Session) programs."""
import tensorflow as tf

from fusecomm.basics import global_process_set
from fusecomm.ops import allgather_object, broadcast_object  # noqa: F401  (Python objects)
from fusecomm.tensorflow.mpi_ops import broadcast_


def broadcast_variables(variables, root_rank, process_set=global_process_set, inplace=False):
    """Gives every variable (tf.Variable or keras.Variable) root_rank's value. All variables
    travel as one batch. `inplace` is accepted for Horovod scripts; the assignment is always
    in place. Eagerly it is done on return; in a graph (tf.compat.v1) it returns the op that
    does it (run it in a Session, as Horovod's)."""
    del inplace
    variables = list(variables)
    if not variables:
        return None if tf.executing_eagerly() else tf.no_op()
    values = broadcast_(variables, root_rank, name=None, process_set=process_set)
    if tf.executing_eagerly():
        return None
    return tf.group(*values)


def broadcast_global_variables(root_rank):
    """Horovod's TF1 call: the op that gives every global variable of the default graph
    root_rank's value. Graph mode only, as in Horovod (eagerly: RuntimeError)."""
    if tf.executing_eagerly():
        raise RuntimeError("hvd.broadcast_global_variables() does not support eager execution. "
                           "Please use `hvd.broadcast_variables(<model/optimizer variables>)` "
                           "instead.")
    return broadcast_variables(tf.compat.v1.global_variables(), root_rank)


class BroadcastGlobalVariablesHook(tf.compat.v1.train.SessionRunHook):
    """SessionRunHook (tf.compat.v1.train.MonitoredTrainingSession, Estimator) that gives every
    global variable root_rank's value once the session is created, so every rank starts from
    the same state. Built in begin(), when the graph is final; rebuilt if the graph changes."""

    def __init__(self, root_rank, device="", process_set=global_process_set):
        super().__init__()
        self.root_rank = root_rank
        self.device = device
        self.process_set = process_set
        self.bcast_op = None

    def begin(self):
        graph = tf.compat.v1.get_default_graph()
        if self.bcast_op is None or self.bcast_op.graph is not graph:
            with tf.device(self.device):
                self.bcast_op = broadcast_variables(tf.compat.v1.global_variables(),
                                                    self.root_rank, process_set=self.process_set)

    def after_create_session(self, session, coord):
        session.run(self.bcast_op)
