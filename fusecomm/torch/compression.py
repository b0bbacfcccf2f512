"""Gradient compression applied around an allreduce (horovod.torch.compression)."""
import torch

from fusecomm.compression import Compressor, NoneCompressor, make_compression  # noqa: F401

Compression, FP16Compressor, BF16Compressor = make_compression(
    is_floating=lambda t: t.dtype.is_floating_point, dtype_of=lambda t: t.dtype,
    cast=lambda t, dtype: t.to(dtype), fp16=torch.float16, bf16=torch.bfloat16)
