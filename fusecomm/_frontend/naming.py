"""Engine names of collectives. Ranks match collectives by name, so every rule here must give
the same name on every rank that calls the same collectives in the same order."""
import threading

from fusecomm._engine import OP_NAMES

_lock = threading.Lock()
_counters = {}  # (op type, process set id) -> unnamed collectives so far


class Complete(str):
    """A name that is final as it is (a member of a group: '<base>.<i>'): no prefix added."""


def counter_name(op_type, process_set_id):
    """Unnamed collectives get a counter per operation and process set, so ranks calling in the
    same order agree (an op on a set some ranks are not in must not shift the others' names)."""
    key = (op_type, process_set_id)
    with _lock:
        n = _counters.get(key, 0)
        _counters[key] = n + 1
    where = f"set{process_set_id}." if process_set_id else ""
    return f"{OP_NAMES[op_type]}.noname.{where}{n}"


def check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, not {type(name).__name__}")
    if not name:
        raise ValueError("name must not be empty")
    return name


def engine_name(op_type, name, process_set_id, prefix_op=False):
    """The engine name of one collective. With prefix_op (Horovod's torch rule) a user's name
    becomes '<op>.<name>', so an allreduce and a broadcast may share a user name."""
    if name is None:
        return counter_name(op_type, process_set_id)
    if isinstance(name, Complete):
        return str(name)
    check_name(name)
    return f"{OP_NAMES[op_type]}.{name}" if prefix_op else name


def member_names(base, count):
    """The names of a group's members: '<base>.<i>'."""
    return [Complete(f"{base}.{i}") for i in range(count)]


def reset():
    with _lock:
        _counters.clear()
