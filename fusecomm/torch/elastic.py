"""horovod.torch.elastic's names, so that scripts importing them load; fusecomm has no elastic
training (jobs with a changing set of ranks), so using any of them raises NotImplementedError
with that message, at the point the script first touches it (e.g. the @hvd.elastic.run
decorator)."""

_MESSAGE = ("fusecomm does not implement elastic training (horovod.torch.elastic.{name}); run "
            "a fixed-size job with `fusecomm run -np N` and plain hvd.DistributedOptimizer")


def _unsupported(name):
    def refuse(*_args, **_kwargs):
        raise NotImplementedError(_MESSAGE.format(name=name))

    refuse.__name__ = refuse.__qualname__ = name
    refuse.__doc__ = f"Not implemented in fusecomm: raises NotImplementedError ({name})."
    return refuse


class _Unsupported:
    """A class-like name (State, TorchState, ElasticSampler...): constructing one raises."""

    def __init__(self, *_args, **_kwargs):
        raise NotImplementedError(_MESSAGE.format(name=type(self).__name__))


run = _unsupported("run")
State = type("State", (_Unsupported,), {})
ObjectState = type("ObjectState", (_Unsupported,), {})
TorchState = type("TorchState", (_Unsupported,), {})
ElasticSampler = type("ElasticSampler", (_Unsupported,), {})
