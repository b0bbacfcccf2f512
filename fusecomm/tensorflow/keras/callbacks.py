"""Keras 3 callbacks for data-parallel training (Horovod's, for keras.callbacks.Callback)."""
import keras
import numpy as np

from fusecomm import ops as _np_ops
from fusecomm._engine import Average
from fusecomm.basics import global_process_set, rank, size
from fusecomm.tensorflow.functions import broadcast_variables


class BroadcastGlobalVariablesCallback(keras.callbacks.Callback):
    """Gives every rank root_rank's model weights and optimizer variables when training begins
    (the optimizer is built first, so its slots exist), so all ranks start identical.

    Horovod broadcast after the first batch, when Keras 2 had created the optimizer's slots;
    broadcasting before the first step makes every rank take that step from the same weights.
    A model that builds its layers in its first step (no Input, no build()) cannot be broadcast
    before it; then the broadcast follows the first batch, as in Horovod.
    The model's weights (trainable and not, e.g. BatchNorm statistics) are broadcast, not the
    random-seed state of dropout layers, so each rank keeps drawing its own dropout masks.

    local_variables: variables to leave as they are on each rank."""

    def __init__(self, root_rank, device="", local_variables=None,
                 process_set=global_process_set):
        super().__init__()
        del device  # data crosses through host memory
        self.root_rank = root_rank
        self.process_set = process_set
        if local_variables is None:
            local_variables = []
        elif not isinstance(local_variables, (list, tuple, set)):
            local_variables = [local_variables]
        self._local = {id(v) for v in local_variables}
        self.broadcast_done = False

    def on_train_begin(self, logs=None):
        if not self.broadcast_done and self.model.built:
            self._broadcast()

    def on_train_batch_end(self, batch, logs=None):
        if not self.broadcast_done:
            self._broadcast()

    def _broadcast(self):
        variables = list(self.model.weights)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            if not optimizer.built:
                optimizer.build(self.model.trainable_variables)
            variables += list(optimizer.variables)
        broadcast_variables([v for v in variables if id(v) not in self._local], self.root_rank,
                            process_set=self.process_set)
        self.broadcast_done = True


class MetricAverageCallback(keras.callbacks.Callback):
    """Replaces each epoch's logs by their average over ranks (one fused batch), so callbacks
    after it (ReduceLROnPlateau, EarlyStopping, checkpoints, History) see global values. Put it
    before them in the callback list."""

    def __init__(self, device="", process_set=global_process_set):
        super().__init__()
        del device
        self.process_set = process_set

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        # Sorted, so every rank submits the same names in the same order.
        names = sorted(k for k, v in logs.items() if np.ndim(v) == 0)
        values = [np.asarray(float(logs[k]), dtype=np.float64) for k in names]
        averaged = _np_ops.grouped_allreduce(values, name="MetricAverageCallback", op=Average,
                                             process_set=self.process_set)
        for key, value in zip(names, averaged):
            logs[key] = float(value)


def _get_lr(optimizer):
    value = optimizer.learning_rate  # a variable, or a schedule's current value
    return float(value.numpy() if hasattr(value, "numpy") else value)


def _momentum_slots(optimizer):
    """The velocity variables of optimizers whose momentum buffer carries the learning rate
    (SGD's `momentums`, RMSprop's `_momentums`); Adam's first moments do not, and are left."""
    if not getattr(optimizer, "momentum", 0):
        return []
    for attr in ("momentums", "_momentums"):
        slots = getattr(optimizer, attr, None)
        if slots:
            return [s for s in slots if s is not None]
    return []


def _set_lr(callback, new_lr, momentum_correction):
    """Sets the rate of the callback's model's optimizer; with momentum_correction, momentum
    buffers are scaled by new/old rate (Goyal et al.), which makes Keras' velocity (which
    carries the rate) behave as torch's buffer (which does not)."""
    optimizer = callback.model.optimizer
    old_lr = _get_lr(optimizer)
    try:
        optimizer.learning_rate = new_lr
    except TypeError as e:  # a LearningRateSchedule: Keras refuses to overwrite it
        raise TypeError(f"{type(callback).__name__} sets the learning rate, so the optimizer "
                        f"needs a float learning_rate, not a schedule ({e})") from None
    new_lr = _get_lr(optimizer)  # as the optimizer holds it (float32)
    if momentum_correction and old_lr > 0 and new_lr != old_lr:
        for slot in _momentum_slots(optimizer):
            slot.assign(slot * (new_lr / old_lr))


class LearningRateScheduleCallback(keras.callbacks.Callback):
    """Sets the learning rate to initial_lr * multiplier(epoch) from start_epoch up to (not
    including) end_epoch. `multiplier` is a constant (then lr = initial_lr *
    multiplier ** (epoch - start_epoch)) or a function of the epoch.

    staircase=True adjusts at the start of each epoch with an integer epoch; staircase=False
    adjusts before every batch with epoch + batch / steps_per_epoch (steps_per_epoch is read from
    model.fit's parameters when not given).

    momentum_correction: when the rate changes from lr to lr', scale the momentum buffers by
    lr'/lr (Goyal et al. 2017). Horovod scaled the momentum coefficient for one batch; Keras 3
    optimizers bake the coefficient into the compiled step, and scaling the buffer once is the
    same update."""

    def __init__(self, initial_lr, multiplier, start_epoch=0, end_epoch=None, staircase=True,
                 momentum_correction=True, steps_per_epoch=None):
        super().__init__()
        if initial_lr is None:
            raise ValueError("initial_lr is required")
        self.initial_lr = float(initial_lr)
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.staircase = staircase
        self.momentum_correction = momentum_correction
        self.steps_per_epoch = steps_per_epoch
        self.current_epoch = None
        if callable(multiplier):
            self.multiplier = multiplier
        else:
            self.multiplier = lambda epoch: multiplier ** (epoch - start_epoch)

    def _autodetect_steps_per_epoch(self):
        steps = (self.params or {}).get("steps")
        if not steps:
            raise ValueError(f"cannot tell the number of steps per epoch; pass steps_per_epoch "
                             f"to {type(self).__name__}() or steps_per_epoch to model.fit()")
        return steps

    def _adjust_learning_rate(self, epoch):
        _set_lr(self, self.initial_lr * self.multiplier(epoch), self.momentum_correction)

    def on_train_begin(self, logs=None):
        if not self.staircase and not self.steps_per_epoch:
            self.steps_per_epoch = self._autodetect_steps_per_epoch()

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current_epoch < self.start_epoch or (
                self.end_epoch is not None and self.current_epoch >= self.end_epoch):
            return
        if self.staircase and batch == 0:
            self._adjust_learning_rate(self.current_epoch)
        elif not self.staircase:
            self._adjust_learning_rate(self.current_epoch + float(batch) / self.steps_per_epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = _get_lr(self.model.optimizer)


class LearningRateWarmupCallback(LearningRateScheduleCallback):
    """Gradual warm-up (Goyal et al. 2017): the rate rises from initial_lr / size() to initial_lr
    over warmup_epochs, adjusted before every batch:

        lr(epoch) = initial_lr / size * (epoch * (size - 1) / warmup_epochs + 1)

    evaluated at epoch + 1 / steps_per_epoch, so each epoch ends on a round value."""

    def __init__(self, initial_lr, warmup_epochs=5, momentum_correction=True, steps_per_epoch=None,
                 verbose=0):
        def multiplier(epoch):
            epoch += 1.0 / self.steps_per_epoch
            n = size()
            return 1.0 / n * (epoch * (n - 1) / warmup_epochs + 1)

        super().__init__(initial_lr, multiplier, start_epoch=0, end_epoch=warmup_epochs,
                         staircase=False, momentum_correction=momentum_correction,
                         steps_per_epoch=steps_per_epoch)
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if epoch == self.end_epoch - 1 and self.verbose > 0 and rank() == 0:
            print(f"\nEpoch {epoch + 1}: finished gradual learning rate warmup to "
                  f"{_get_lr(self.model.optimizer):g}.")


class BatchSizeControlCallback(keras.callbacks.Callback):
    """Batch-size control (Mikami et al.) for model.fit: a fusecomm.optim.BatchSizePlan's global
    batch and learning rate, epoch by epoch, by the same rules as
    fusecomm.torch.optim.BatchSizeController.

        plan = fusecomm.optim.BatchSizePlan([(0, 256), (10, 1024)], ranks=hvd.size(),
                                            base_lr=0.1, base_batch=256, warmup_epochs=2)
        control = hvd.callbacks.BatchSizeControlCallback(plan)
        model.fit(control.dataset(x, y), epochs=20, callbacks=[control, ...])

    `dataset(x, y)` (the whole dataset, the same arrays on every rank) is a tf.data.Dataset
    that, in each epoch, yields this rank's share (plan.rank_share) of the epoch's global
    batches: the samples in a per-epoch order drawn from `seed` (the same on every rank; the
    dataset order itself without `shuffle`), steps_in_epoch of them, the remainder dropped.
    Before every batch the optimizer's rate becomes plan.lr_at(epoch, batch, steps), with
    momentum_correction as for LearningRateScheduleCallback. The epoch's logs get "lr" and
    "global_batch". The optimizer needs a float learning_rate (not a schedule).

    Keras compiles the training step for a fixed number of passes, so this face does not
    accumulate micro-batches: a plan whose stages need backward_passes > 1 (max_rank_batch) is
    refused. (Keras logs "Your input ran out of data" at the end of each epoch: the epochs have
    different numbers of steps.)"""

    def __init__(self, plan, momentum_correction=True, shuffle=True, seed=0):
        super().__init__()
        accumulating = [s for s in plan.stages if s.backward_passes != 1]
        if accumulating:
            raise ValueError(f"the stage from epoch {accumulating[0].start_epoch} accumulates "
                             f"{accumulating[0].backward_passes} micro-batches per step, which "
                             "the Keras batch-size control does not do: give the plan no "
                             "max_rank_batch, or one every stage's rank_batch fits")
        self.plan = plan
        self.momentum_correction = momentum_correction
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = None
        self._dataset_size = None

    def epoch_order(self, epoch):
        """The sample order of `epoch` (a permutation of range(dataset size))."""
        if not self.shuffle:
            return np.arange(self._dataset_size)
        return np.random.default_rng([self.seed, epoch]).permutation(self._dataset_size)

    def dataset(self, x, y=None, sample_weight=None):
        import tensorflow as tf

        arrays = [np.asarray(a) for a in (x, y, sample_weight) if a is not None]
        sizes = {len(a) for a in arrays}
        if len(sizes) != 1:
            raise ValueError(f"x, y and sample_weight have different lengths: {sorted(sizes)}")
        self._dataset_size = sizes.pop()

        def batches():
            # Runs when Keras starts reading an epoch, after on_epoch_begin set self.epoch.
            if self.epoch is None:
                raise RuntimeError("BatchSizeControlCallback.dataset() is read by model.fit "
                                   "with the callback in its callbacks")
            order = self.epoch_order(self.epoch)
            for step in range(self.plan.steps_in_epoch(self.epoch, self._dataset_size)):
                rows = self.plan.rank_share(self.epoch, step, rank(), order)
                yield tuple(a[rows] for a in arrays)

        signature = tuple(tf.TensorSpec((None,) + a.shape[1:], tf.as_dtype(a.dtype))
                          for a in arrays)
        return tf.data.Dataset.from_generator(batches, output_signature=signature)

    def on_train_begin(self, logs=None):
        if self.plan.ranks != size():
            raise ValueError(f"the plan is for {self.plan.ranks} ranks; this job has {size()}")
        if self._dataset_size is None:
            raise ValueError("train on BatchSizeControlCallback.dataset(x, y): the callback "
                             "picks each epoch's batches")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._steps = self.plan.steps_in_epoch(epoch, self._dataset_size)

    def on_train_batch_begin(self, batch, logs=None):
        if batch < self._steps:  # Keras asks once more, past the end of a shorter epoch
            _set_lr(self, self.plan.lr_at(self.epoch, batch, self._steps),
                    self.momentum_correction)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = _get_lr(self.model.optimizer)
            logs["global_batch"] = self.plan.at_epoch(epoch).global_batch


class BestModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Horovod's: ModelCheckpoint with save_best_only=True that saves the whole model, whose
    filepath may be set after construction (callback.filepath = "best.keras") but before
    training starts. Usually given to rank 0 only, like every checkpoint."""

    def __init__(self, monitor="val_loss", verbose=0, mode="auto", save_freq="epoch",
                 filepath=None):
        # Keras checks the file name's extension at construction; a real one is checked again
        # when training begins.
        super().__init__(filepath=filepath or "unset.keras", monitor=monitor, verbose=verbose,
                         save_best_only=True, save_weights_only=False, mode=mode,
                         save_freq=save_freq)
        self.filepath = filepath

    def on_train_begin(self, logs=None):
        if not self.filepath:
            raise ValueError("BestModelCheckpoint needs its filepath (ending in .keras or .h5) "
                             "set before training: callback.filepath = 'best.keras'")
        if not str(self.filepath).endswith((".keras", ".h5")):
            raise ValueError(f"BestModelCheckpoint saves the whole model: its filepath must end "
                             f"in .keras or .h5, not {self.filepath!r}")
        super().on_train_begin(logs)
