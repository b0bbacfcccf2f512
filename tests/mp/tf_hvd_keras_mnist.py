"""Horovod's examples/tensorflow2/tensorflow2_keras_mnist.py (0.28.1), run with fusecomm, then
resumed from its checkpoint with hvd.load_model.

Changed from Horovod's script, and nothing else: the import; synthetic MNIST-shaped data (no
download); fewer, smaller steps and epochs for a CPU test; what Keras 3 dropped or renamed
(compile() has no experimental_run_tf_function; whole-model checkpoints end in .keras); the
checkpoint directory (CHECKPOINT_DIR); and, after it, the resume and the line the test reads."""
import os
import sys

import numpy as np
import tensorflow as tf

import fusecomm.tensorflow.keras as hvd  # was: import horovod.tensorflow.keras as hvd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tf_hvd_tensorflow2_mnist import synthetic_mnist  # noqa: E402

# Horovod: initialize Horovod.
hvd.init()

# Horovod: pin GPU to be used to process local rank (one GPU per process)
gpus = tf.config.experimental.list_physical_devices('GPU')
for gpu in gpus:
    tf.config.experimental.set_memory_growth(gpu, True)
if gpus:
    tf.config.experimental.set_visible_devices(gpus[hvd.local_rank()], 'GPU')

(mnist_images, mnist_labels), _ = synthetic_mnist(hvd.rank())

dataset = tf.data.Dataset.from_tensor_slices(
    (tf.cast(mnist_images[..., tf.newaxis] / 255.0, tf.float32),
     tf.cast(mnist_labels, tf.int64))
)
dataset = dataset.repeat().shuffle(10000).batch(32)

mnist_model = tf.keras.Sequential([
    tf.keras.layers.Conv2D(8, [3, 3], activation='relu'),
    tf.keras.layers.MaxPooling2D(pool_size=(2, 2)),
    tf.keras.layers.Dropout(0.25),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(32, activation='relu'),
    tf.keras.layers.Dense(10, activation='softmax')
])

# Horovod: adjust learning rate based on number of GPUs.
scaled_lr = 0.001 * hvd.size()
opt = tf.optimizers.Adam(scaled_lr)

# Horovod: add Horovod DistributedOptimizer.
opt = hvd.DistributedOptimizer(
    opt, backward_passes_per_step=1, average_aggregated_gradients=True)

# Horovod: Specify `experimental_run_tf_function=False` to ensure TensorFlow
# uses hvd.DistributedOptimizer() to compute gradients.
mnist_model.compile(loss=tf.losses.SparseCategoricalCrossentropy(),
                    optimizer=opt,
                    metrics=['accuracy'])

callbacks = [
    # Horovod: broadcast initial variable states from rank 0 to all other processes.
    # This is necessary to ensure consistent initialization of all workers when
    # training is started with random weights or restored from a checkpoint.
    hvd.callbacks.BroadcastGlobalVariablesCallback(0),

    # Horovod: average metrics among workers at the end of every epoch.
    #
    # Note: This callback must be in the list before the ReduceLROnPlateau,
    # TensorBoard or other metrics-based callbacks.
    hvd.callbacks.MetricAverageCallback(),

    # Horovod: using `lr = 1.0 * hvd.size()` from the very beginning leads to worse final
    # accuracy. Scale the learning rate `lr = 1.0` ---> `lr = 1.0 * hvd.size()` during
    # the first three epochs. See https://arxiv.org/abs/1706.02677 for details.
    hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=2, verbose=1),
]

checkpoint_dir = os.environ.get("CHECKPOINT_DIR", ".")
# Horovod: save checkpoints only on worker 0 to prevent other workers from corrupting them.
if hvd.rank() == 0:
    callbacks.append(tf.keras.callbacks.ModelCheckpoint(
        os.path.join(checkpoint_dir, 'checkpoint-{epoch}.keras')))

# Horovod: write logs on worker 0.
verbose = 1 if hvd.rank() == 0 else 0

# Train the model.
# Horovod: adjust number of steps based on number of GPUs.
history = mnist_model.fit(dataset, steps_per_epoch=48 // hvd.size(), callbacks=callbacks,
                          epochs=3, verbose=verbose)

# Resume from the last checkpoint (Horovod's keras_imagenet_resnet50.py way): load_model keeps
# the optimizer distributed, with its state.
# Horovod: rank 0 names the checkpoint (once written: this waits for it) for every rank.
resume_from = hvd.broadcast_object(
    os.path.join(checkpoint_dir, 'checkpoint-3.keras') if hvd.rank() == 0 else None, root_rank=0)
resumed = hvd.load_model(resume_from)
resumed.fit(dataset, steps_per_epoch=48 // hvd.size(),
            callbacks=[hvd.callbacks.MetricAverageCallback()], epochs=4, initial_epoch=3,
            verbose=verbose)
weights = np.concatenate([np.ravel(v.numpy()) for v in resumed.weights]).tobytes()
same = hvd.allgather_object(weights).count(weights)
print('rank %d losses %s resumed optimizer %s iterations %d weights identical on %d ranks' % (
    hvd.rank(), ','.join('%.4f' % v for v in history.history['loss']),
    type(resumed.optimizer).__mro__[1].__name__, int(resumed.optimizer.iterations.numpy()),
    same))
