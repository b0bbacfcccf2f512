"""One request per collective, built and submitted once, for any framework through an Adapter.

A face (NumPy, torch, TensorFlow) validates nothing itself: `Collectives(adapter)` checks the
tensor once (dtype code, device), names the collective, fills one _core.Request (or reuses the
one built for an earlier call of the same named collective) and returns a Handle whose result
the adapter wraps as the framework's own tensor."""

from fusecomm import _core, _engine
from fusecomm._engine import (ALLGATHER, ALLREDUCE, ALLTOALL, BARRIER, BROADCAST, JOIN,
                              REDUCESCATTER, Sum)
from fusecomm._frontend import naming
from fusecomm._frontend.handle import Handle
from fusecomm._frontend.validate import check_rows, check_scale, split_list
from fusecomm.basics import global_process_set, process_set_id, root_in_set


class Adapter:
    """What the core needs from a framework. check() returns (tensor, dtype code, device
    ordinal or -1) and is the only validation; the rest are small conversions."""

    prefix_op_names = False  # Horovod's torch names are '<op>.<name>'

    def check(self, tensor, what):
        raise NotImplementedError

    def plain(self, tensor, in_place):
        """(data address, dtype code) when `tensor` needs no conversion and passes check() for
        certain (a repeated synchronous call takes this short way); None when unsure."""
        return None

    def contiguous(self, tensor):
        return tensor

    def in_place(self, tensor, original):
        """(buffer the engine reads and writes, finisher(result) -> what synchronize returns)."""
        raise NotImplementedError

    def empty_like(self, tensor):
        raise NotImplementedError

    def ptr(self, tensor):
        raise NotImplementedError

    def stream(self, tensor, device):
        return 0

    def wrap(self, data, shape, like, device):
        """An engine-allocated result (uint8 host array, DeviceBuffer or None) as a tensor."""
        raise NotImplementedError

    def received_splits(self, splits):
        raise NotImplementedError


def _ignore_result(result):
    return None


class Collectives:
    """The collectives of one face. Every method returns a Handle, or with wait=True (the
    synchronous API) the result itself."""

    # Requests kept for reuse at most; past it the cache starts again (names that never repeat,
    # such as per-step ones, would otherwise grow it without end).
    MAX_CACHED_REQUESTS = 4096

    def __init__(self, adapter):
        self.adapter = adapter
        # A named collective is called again and again with the same description (a training
        # step's gradients, a benchmark's loop): its _core.Request is built once, which saves
        # about a microsecond a call (a third of an 8-byte synchronous all-reduce's own time).
        # Unnamed collectives are named by a counter, and device or alltoall requests carry a
        # stream or splits that may change: those are built every time.
        self._requests = {}

    def _request(self, op_type, name, ps_id, dtype, shape, op, prescale, postscale, root,
                 algorithm):
        """The _core.Request describing a collective (addresses are given at submission)."""
        request = _core.Request(op_type, naming.engine_name(op_type, name, ps_id,
                                                            self.adapter.prefix_op_names),
                                dtype, shape)
        # Fields left at the Request's defaults are not set: each set costs a pybind11 call.
        if op != Sum:
            request.reduce_op = op
        if prescale != 1.0:
            request.prescale = prescale
        if postscale != 1.0:
            request.postscale = postscale
        if root:
            request.root = root
        if algorithm is not None:
            request.algorithm = algorithm
        if ps_id:
            request.process_set = ps_id
        return request

    def _submit(self, op_type, checked, output, finisher, name, process_set, *, op=Sum,
                prescale=1.0, postscale=1.0, root=0, splits=None, algorithm=None,
                keep_alive=None, wait=False):
        """A Handle; with `wait`, the finished result instead (a synchronous call)."""
        tensor, dtype, device = checked
        if algorithm is not None and not isinstance(algorithm, str):
            raise TypeError("algorithm must be a string such as 'ring' or 'mpi'")
        adapter = self.adapter
        ps_id = process_set_id(process_set)
        address = adapter.ptr(tensor)
        output_address = (0 if output is None else
                          address if output is tensor else adapter.ptr(output))
        shape = tuple(tensor.shape)
        # Only a plain str name is a key: a group member's naming.Complete of the same text
        # becomes a different engine name.
        if name.__class__ is str and splits is None and device < 0:
            key = (op_type, name, ps_id, dtype, shape, op, prescale, postscale, root, algorithm)
            request = self._requests.get(key)
            if request is None:
                request = self._request(op_type, name, ps_id, dtype, shape, op, prescale,
                                        postscale, root, algorithm)
                if len(self._requests) >= self.MAX_CACHED_REQUESTS:
                    self._requests.clear()
                self._requests[key] = request
        else:
            request = self._request(op_type, name, ps_id, dtype, shape, op, prescale, postscale,
                                    root, algorithm)
            if device >= 0:
                request.device = device
                request.stream = adapter.stream(tensor, device)
            if splits is not None:
                request.splits = splits
        keep = (tensor, output) if keep_alive is None else keep_alive
        if wait:
            return _engine.run(request, address, output_address, keep, finisher)
        return Handle((_engine.submit(request, address, output_address, keep, finisher),))

    def check(self, tensor, what="tensor"):
        return self.adapter.check(tensor, what)

    def _output(self, checked, in_place, tensor):
        """(input as checked, output buffer, finisher) of an allreduce or broadcast."""
        if in_place:
            buffer, finisher = self.adapter.in_place(checked[0], tensor)
            if buffer is not checked[0]:
                checked = (buffer,) + checked[1:]
            return checked, buffer, finisher
        source = self.adapter.contiguous(checked[0])
        output = self.adapter.empty_like(source)
        return (source,) + checked[1:], output, lambda result: output

    def _engine_output(self, checked, op_type):
        """(contiguous input as checked, finisher wrapping the engine-allocated output)."""
        source = self.adapter.contiguous(checked[0])
        check_rows(len(source.shape), op_type)
        device, wrap = checked[2], self.adapter.wrap
        return (source,) + checked[1:], lambda r: wrap(r[0], r[1], source, device)

    def allreduce(self, tensor, name=None, op=Sum, prescale_factor=1.0, postscale_factor=1.0,
                  process_set=None, in_place=False, algorithm=None, checked=None, wait=False):
        # Only arguments whose equality means the same request: a str algorithm, float scales
        # (an int, an array or a complex number equal to a cached float takes the whole way,
        # where check_scale converts or refuses it).
        if (wait and name.__class__ is str and checked is None
                and (process_set is None or process_set is global_process_set)
                and (algorithm is None or algorithm.__class__ is str)
                and prescale_factor.__class__ is float and postscale_factor.__class__ is float):
            result = self._repeated_allreduce(tensor, name, op, prescale_factor,
                                              postscale_factor, in_place, algorithm)
            if result is not None:
                return result
        prescale = check_scale(prescale_factor, "prescale_factor")
        postscale = check_scale(postscale_factor, "postscale_factor")
        source, output, finisher = self._output(checked or self.check(tensor), in_place, tensor)
        return self._submit(ALLREDUCE, source, output, finisher, name, process_set, op=op,
                            prescale=prescale, postscale=postscale, algorithm=algorithm,
                            wait=wait)

    def _repeated_allreduce(self, tensor, name, op, prescale, postscale, in_place, algorithm):
        """The result of a synchronous all-reduce of a plain host tensor, run when an earlier
        call with the same name and description built its request (which validated op, scales
        and algorithm then); None otherwise. This is the common call of a loop (a benchmark's, a
        metric's): it skips every check that the request already stands for, which is half the
        time of an 8-byte all-reduce at 2 ranks."""
        plain = self.adapter.plain(tensor, in_place)
        if plain is None:
            return None
        address, dtype = plain
        request = self._requests.get((ALLREDUCE, name, 0, dtype, tensor.shape, op, prescale,
                                      postscale, 0, algorithm))
        if request is None:
            return None
        if in_place:
            _engine.run(request, address, address, tensor, _ignore_result)
            return tensor
        output = self.adapter.empty_like(tensor)
        _engine.run(request, address, self.adapter.ptr(output), (tensor, output), _ignore_result)
        return output

    def broadcast(self, tensor, root_rank, name=None, process_set=None, in_place=False,
                  checked=None, wait=False):
        root = root_in_set(root_rank, process_set)
        source, output, finisher = self._output(checked or self.check(tensor), in_place, tensor)
        return self._submit(BROADCAST, source, output, finisher, name, process_set, root=root,
                            wait=wait)

    def allgather(self, tensor, name=None, process_set=None, checked=None, wait=False):
        source, finisher = self._engine_output(checked or self.check(tensor), ALLGATHER)
        return self._submit(ALLGATHER, source, None, finisher, name, process_set, wait=wait)

    def reducescatter(self, tensor, name=None, op=Sum, process_set=None, prescale_factor=1.0,
                      postscale_factor=1.0, checked=None, wait=False):
        prescale = check_scale(prescale_factor, "prescale_factor")
        postscale = check_scale(postscale_factor, "postscale_factor")
        source, finisher = self._engine_output(checked or self.check(tensor), REDUCESCATTER)
        return self._submit(REDUCESCATTER, source, None, finisher, name, process_set, op=op,
                            prescale=prescale, postscale=postscale, wait=wait)

    def alltoall(self, tensor, splits=None, name=None, process_set=None, checked=None,
                 wait=False):
        split_values = split_list(splits)
        source, wrap = self._engine_output(checked or self.check(tensor), ALLTOALL)
        to_splits = self.adapter.received_splits
        return self._submit(ALLTOALL, source, None, lambda r: (wrap(r), to_splits(r[2])), name,
                            process_set, splits=split_values, wait=wait)

    def grouped(self, start, op_type, tensors, name, process_set, **kwargs):
        """start(tensor, name=member, checked=..., **kwargs) for every tensor, as ONE engine
        group named '<base>.<i>'; the base comes from the process set's own counter when
        unnamed. Every tensor is checked before anything is in flight. Returns the member
        handles."""
        tensors = list(tensors)
        checked = [self.check(t, f"tensors[{i}]") for i, t in enumerate(tensors)]
        ps_id = process_set_id(process_set)
        base = naming.engine_name(op_type, name, ps_id, self.adapter.prefix_op_names)
        members = naming.member_names(base, len(tensors))
        with _engine.group(ps_id):
            return [start(t, name=n, process_set=process_set, checked=c, **kwargs)
                    for t, n, c in zip(tensors, members, checked)]


_NO_DATA_DTYPE = _engine.DTYPE_CODES["uint8"]


def _submit_no_data(op_type, name, process_set, finisher):
    ps_id = process_set_id(process_set)
    request = _core.Request(op_type, naming.engine_name(op_type, name, ps_id), _NO_DATA_DTYPE,
                            (0,))
    request.process_set = ps_id
    return Handle((_engine.submit(request, 0, 0, None, finisher),))


def barrier(process_set=None):
    """Returns once every rank of the process set has called barrier()."""
    _submit_no_data(BARRIER, None, process_set, lambda result: None).wait()


def join(process_set=None):
    """This rank has no more work; returns the rank that joined last (see fusecomm.ops.join)."""
    return _submit_no_data(JOIN, "join", process_set, lambda result: result[3]).wait()
