"""The Python frontend core: everything the NumPy, torch and TensorFlow faces share.

- validate: argument rules (dtypes, reduce ops, scales, integers, alltoall splits), checked once.
- naming: engine names of collectives (per-process-set counters, op prefixes, group members).
- handle: the one Handle type every *_async call returns.
- collectives: builds one request per collective and submits it, on any framework through an
  Adapter (data pointer, dtype, device/stream, allocation, wrapping of engine outputs).
- gradients: the table of gradient rules of the collectives (torch autograd Functions and
  TensorFlow custom gradients both read it).
- optimizer_rules: the distributed optimizers' argument rules and gradient scaling.
"""
