"""The NumPy adapter: NumPy arrays and anything NumPy can view without copying (the buffer
protocol, __array_interface__, DLPack on the CPU); CuPy arrays (anything with
__cuda_array_interface__) on the GPU with a CUDA build. Results come back as the same kind of
array: NumPy for host input, CuPy for device input."""
import numpy as np

from fusecomm import _core, _engine
from fusecomm._frontend.collectives import Adapter
from fusecomm._frontend.validate import dtype_code


def _cupy():
    try:
        import cupy
    except ImportError:
        raise TypeError("device arrays (__cuda_array_interface__) are handled through CuPy; "
                        "install cupy (e.g. cupy-cuda13x)") from None
    return cupy


def _host_array(tensor, what):
    if isinstance(tensor, np.ndarray):
        return tensor
    if hasattr(tensor, "__dlpack__") and not hasattr(tensor, "__array_interface__"):
        try:
            return np.from_dlpack(tensor)
        except (BufferError, TypeError, RuntimeError) as e:
            raise TypeError(f"{what} cannot be read on the CPU through DLPack: {e}") from None
    try:
        return np.asarray(tensor)
    except Exception as e:  # noqa: BLE001 - anything NumPy refuses is a type error here
        raise TypeError(f"{what} must be an array, not {type(tensor).__name__}: {e}") from None


# np.dtype -> the engine's dtype code, for dtypes in native byte order only (a dtype of the
# other order is a different key): dtype.name and dtype.isnative cost microseconds a call.
_native_dtype_codes = {}


def _code_of(dtype, what):
    code = _native_dtype_codes.get(dtype)
    if code is None:
        code = dtype_code(dtype.name)  # TypeError naming supported dtypes
        if not dtype.isnative:
            raise TypeError(f"{what} has non-native byte order ({dtype.str}); convert it "
                            "with array.astype(array.dtype.newbyteorder('='))")
        _native_dtype_codes[dtype] = code
    return code


class NumpyAdapter(Adapter):
    def check(self, tensor, what):
        if tensor.__class__ is np.ndarray:  # the common case first: no attribute probing
            array = tensor
        elif hasattr(tensor, "__cuda_array_interface__") and not isinstance(tensor, np.ndarray):
            array = _cupy().asarray(tensor)  # no copy: a view of the same device memory
            code = dtype_code(array.dtype.name)
            if not array.flags.c_contiguous:
                raise ValueError(f"{what} must be C-contiguous (use cupy.ascontiguousarray)")
            return array, code, array.device.id
        else:
            array = _host_array(tensor, what)
        code = _code_of(array.dtype, what)
        if not array.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
        return array, code, -1

    def plain(self, tensor, in_place):
        if tensor.__class__ is not np.ndarray:
            return None
        code = _native_dtype_codes.get(tensor.dtype)  # only dtypes that check() accepted
        flags = tensor.flags
        if code is None or not flags.c_contiguous or (in_place and not flags.writeable):
            return None
        return (_core.array_address(tensor) if tensor.size else 0), code

    def in_place(self, array, original):
        if isinstance(array, np.ndarray) and not array.flags.writeable:
            raise ValueError("tensor is read-only; an in-place collective needs a writable array")
        return array, lambda result: array

    def empty_like(self, array):
        if isinstance(array, np.ndarray):
            return np.empty_like(array)
        with array.device:  # CuPy allocates on the current device, not the array's
            return _cupy().empty_like(array)

    def ptr(self, array):
        if not array.size:
            return 0
        if isinstance(array, np.ndarray):
            return _core.array_address(array)
        return array.data.ptr

    def stream(self, array, device):
        return _cupy().cuda.get_current_stream().ptr

    def wrap(self, data, shape, like, device):
        if device >= 0:
            cupy = _cupy()
            with cupy.cuda.Device(device):
                raw = (cupy.asarray(_engine.CudaBytes(data)) if data is not None and data.nbytes
                       else cupy.empty(0, cupy.uint8))
                return raw.view(like.dtype).reshape(shape)
        return (data if data is not None else np.empty(0, np.uint8)).view(like.dtype).reshape(shape)

    def received_splits(self, splits):
        return np.asarray(splits, dtype=np.int32)
