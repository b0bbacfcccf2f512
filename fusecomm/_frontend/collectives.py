"""One request per collective, built and submitted once, for any framework through an Adapter.

A face (NumPy, torch, TensorFlow) validates nothing itself: `Collectives(adapter)` checks the
tensor once (dtype code, device), names the collective, fills one _core.Request and returns a
Handle whose result the adapter wraps as the framework's own tensor."""
import numpy as np

from fusecomm import _core, _engine
from fusecomm._engine import (ALLGATHER, ALLREDUCE, ALLTOALL, BARRIER, BROADCAST, JOIN,
                              REDUCESCATTER, Sum)
from fusecomm._frontend import naming
from fusecomm._frontend.handle import Handle
from fusecomm._frontend.validate import check_rows, check_scale, split_list
from fusecomm.basics import process_set_id, root_in_set


class Adapter:
    """What the core needs from a framework. check() returns (tensor, dtype code, device
    ordinal or -1) and is the only validation; the rest are small conversions."""

    prefix_op_names = False  # Horovod's torch names are '<op>.<name>'

    def check(self, tensor, what):
        raise NotImplementedError

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


class Collectives:
    """The collectives of one face. Every method returns a Handle, or with wait=True (the
    synchronous API) the result itself."""

    def __init__(self, adapter):
        self.adapter = adapter

    def _submit(self, op_type, checked, output, finisher, name, process_set, *, op=Sum,
                prescale=1.0, postscale=1.0, root=0, splits=None, algorithm=None,
                keep_alive=None, wait=False):
        """A Handle; with `wait`, the finished result instead (a synchronous call)."""
        tensor, dtype, device = checked
        adapter = self.adapter
        ps_id = process_set_id(process_set)
        address = adapter.ptr(tensor)
        output_address = (0 if output is None else
                          address if output is tensor else adapter.ptr(output))
        request = _core.Request(op_type, naming.engine_name(op_type, name, ps_id,
                                                            adapter.prefix_op_names),
                                dtype, tuple(tensor.shape), address, output_address)
        # Fields left at the Request's defaults are not set: each set costs a pybind11 call.
        if op != Sum:
            request.reduce_op = op
        if prescale != 1.0:
            request.prescale = prescale
        if postscale != 1.0:
            request.postscale = postscale
        if root:
            request.root = root
        if device >= 0:
            request.device = device
            request.stream = adapter.stream(tensor, device)
        if algorithm is not None:
            if not isinstance(algorithm, str):
                raise TypeError("algorithm must be a string such as 'ring' or 'mpi'")
            request.algorithm = algorithm
        if splits is not None:
            request.splits = splits
        if ps_id:
            request.process_set = ps_id
        keep = (tensor, output) if keep_alive is None else keep_alive
        if wait:
            return _engine.run(request, keep, finisher)
        return Handle((_engine.submit(request, keep, finisher),))

    def check(self, tensor, what="tensor"):
        return self.adapter.check(tensor, what)

    def _output(self, checked, in_place, tensor):
        """(input as checked, output buffer, finisher) of an allreduce or broadcast."""
        if in_place:
            buffer, finisher = self.adapter.in_place(checked[0], tensor)
            return (buffer,) + checked[1:], buffer, finisher
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
        prescale = check_scale(prescale_factor, "prescale_factor")
        postscale = check_scale(postscale_factor, "postscale_factor")
        source, output, finisher = self._output(checked or self.check(tensor), in_place, tensor)
        return self._submit(ALLREDUCE, source, output, finisher, name, process_set, op=op,
                            prescale=prescale, postscale=postscale, algorithm=algorithm,
                            wait=wait)

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


_NO_DATA = (np.empty(0, np.uint8), _engine.DTYPE_CODES["uint8"], -1)


def _submit_no_data(op_type, name, process_set, finisher):
    ps_id = process_set_id(process_set)
    request = _core.Request()
    request.op_type = op_type
    request.name = naming.engine_name(op_type, name, ps_id)
    request.dtype = _NO_DATA[1]
    request.shape = (0,)
    request.process_set = ps_id
    return Handle((_engine.submit(request, None, finisher),))


def barrier(process_set=None):
    """Returns once every rank of the process set has called barrier()."""
    _submit_no_data(BARRIER, None, process_set, lambda result: None).wait()


def join(process_set=None):
    """This rank has no more work; returns the rank that joined last (see fusecomm.ops.join)."""
    return _submit_no_data(JOIN, "join", process_set, lambda result: result[3]).wait()
