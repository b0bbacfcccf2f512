"""Gradient compression around an all-reduce, for every frontend (Horovod's Compression.none,
.fp16, .bf16): floating tensors travel in a 16-bit type and come back in their own dtype;
integers and bools pass through (narrowing them would lose values)."""


class Compressor:
    """Interface: compress(tensor) -> (tensor to send, context); decompress(tensor, context)."""

    @staticmethod
    def compress(tensor):
        raise NotImplementedError

    @staticmethod
    def decompress(tensor, ctx):
        raise NotImplementedError


class NoneCompressor(Compressor):
    """Sends tensors as they are."""

    @staticmethod
    def compress(tensor):
        return tensor, None

    @staticmethod
    def decompress(tensor, ctx):
        return tensor


def make_compression(is_floating, dtype_of, cast, fp16, bf16):
    """The Compression namespace of one framework, given how it tests, reads and casts dtypes."""

    def cast_compressor(name, wire_dtype, doc):
        def compress(tensor):
            if is_floating(tensor) and dtype_of(tensor) != wire_dtype:
                return cast(tensor, wire_dtype), dtype_of(tensor)
            return tensor, None

        def decompress(tensor, ctx):
            return tensor if ctx is None else cast(tensor, ctx)

        return type(name, (Compressor,), {"__doc__": doc, "wire_dtype": wire_dtype,
                                          "compress": staticmethod(compress),
                                          "decompress": staticmethod(decompress)})

    fp16_compressor = cast_compressor("FP16Compressor", fp16, "Floating tensors travel as float16.")
    bf16_compressor = cast_compressor("BF16Compressor", bf16,
                                      "Floating tensors travel as bfloat16 (float32's range).")

    class Compression:
        """Compression algorithms for DistributedOptimizer and allreduce(compression=...)."""

        none = NoneCompressor
        fp16 = fp16_compressor
        bf16 = bf16_compressor

    return Compression, fp16_compressor, bf16_compressor
