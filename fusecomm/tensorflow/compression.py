"""Gradient compression for the wire (Horovod's Compression.none / .fp16 / .bf16)."""
import tensorflow as tf

from fusecomm.compression import Compressor, NoneCompressor, make_compression  # noqa: F401

Compression, FP16Compressor, BF16Compressor = make_compression(
    is_floating=lambda t: t.dtype.is_floating, dtype_of=lambda t: t.dtype,
    cast=tf.cast, fp16=tf.float16, bf16=tf.bfloat16)
