"""Gradient compression for the wire: floating tensors travel as fp16 or bf16 and come back in
their own dtype. Same names as Horovod's (Compression.none / .fp16 / .bf16)."""
import tensorflow as tf


class Compressor:
    """Interface: compress(tensor) -> (tensor to send, context); decompress(tensor, context)."""

    @staticmethod
    def compress(tensor):
        raise NotImplementedError

    @staticmethod
    def decompress(tensor, ctx):
        raise NotImplementedError


class NoneCompressor(Compressor):
    @staticmethod
    def compress(tensor):
        return tensor, None

    @staticmethod
    def decompress(tensor, ctx):
        return tensor


def _cast_compressor(wire_dtype):
    class _CastCompressor(Compressor):
        @staticmethod
        def compress(tensor):
            # Integers and bools are exact already; narrowing them would lose values.
            if tensor.dtype.is_floating and tensor.dtype != wire_dtype:
                return tf.cast(tensor, wire_dtype), tensor.dtype
            return tensor, None

        @staticmethod
        def decompress(tensor, ctx):
            return tensor if ctx is None else tf.cast(tensor, ctx)

    return _CastCompressor


FP16Compressor = _cast_compressor(tf.float16)
FP16Compressor.__name__ = FP16Compressor.__qualname__ = "FP16Compressor"
BF16Compressor = _cast_compressor(tf.bfloat16)
BF16Compressor.__name__ = BF16Compressor.__qualname__ = "BF16Compressor"


class Compression:
    """Optional compression of dense tensors before they are reduced."""
    none = NoneCompressor
    fp16 = FP16Compressor
    bf16 = BF16Compressor
