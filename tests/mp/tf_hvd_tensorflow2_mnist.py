"""Horovod's examples/tensorflow2/tensorflow2_mnist.py (0.28.1), run with fusecomm.

Changed from Horovod's script, and nothing else: the import; synthetic MNIST-shaped data (no
download; labels a learnable function of the images); fewer, smaller steps for a CPU test;
what TensorFlow 2.21 / Keras 3 renamed (opt.variables is a property; tf.keras.losses); the
checkpoint directory (CHECKPOINT_DIR); and the final line, which the test reads."""
import os

import numpy as np
import tensorflow as tf

import fusecomm.tensorflow as hvd  # was: import horovod.tensorflow as hvd


def synthetic_mnist(seed, count=2048):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count)
    images = rng.integers(0, 128, size=(count, 28, 28)).astype(np.uint8)
    # The label's horizontal band (two of the first 20 rows) is bright on a noisy image: a
    # pattern the model below learns within a few dozen steps, so the loss falls in every run.
    for band in range(10):
        images[labels == band, 2 * band:2 * band + 2, :] += 127
    return (images, labels), None


def main():
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
    loss = tf.keras.losses.SparseCategoricalCrossentropy()

    # Horovod: adjust learning rate based on number of GPUs.
    opt = tf.optimizers.Adam(0.001 * hvd.size())

    checkpoint_dir = os.environ.get("CHECKPOINT_DIR", "./checkpoints")
    checkpoint = tf.train.Checkpoint(model=mnist_model, optimizer=opt)

    @tf.function
    def training_step(images, labels, first_batch):
        with tf.GradientTape() as tape:
            probs = mnist_model(images, training=True)
            loss_value = loss(labels, probs)

        # Horovod: add Horovod Distributed GradientTape.
        tape = hvd.DistributedGradientTape(tape)

        grads = tape.gradient(loss_value, mnist_model.trainable_variables)
        opt.apply_gradients(zip(grads, mnist_model.trainable_variables))

        # Horovod: broadcast initial variable states from rank 0 to all other processes.
        # This is necessary to ensure consistent initialization of all workers when
        # training is started with random weights or restored from a checkpoint.
        #
        # Note: broadcast should be done after the first gradient step to ensure optimizer
        # initialization.
        if first_batch:
            hvd.broadcast_variables(mnist_model.variables, root_rank=0)
            hvd.broadcast_variables(opt.variables, root_rank=0)

        return loss_value

    # Horovod: adjust number of steps based on number of GPUs.
    for batch, (images, labels) in enumerate(dataset.take(240 // hvd.size())):
        loss_value = training_step(images, labels, batch == 0)

        if batch % 10 == 0 and hvd.local_rank() == 0:
            print('Step #%d\tLoss: %.6f' % (batch, loss_value))

    # Horovod: save checkpoints only on worker 0 to prevent other workers from
    # corrupting it.
    if hvd.rank() == 0:
        checkpoint.save(checkpoint_dir)

    weights = np.concatenate([np.ravel(v.numpy()) for v in mnist_model.weights]).tobytes()
    same = hvd.allgather_object(weights).count(weights)
    print('rank %d final loss %.6f weights identical on %d ranks' % (hvd.rank(), loss_value,
                                                                      same))


if __name__ == '__main__':
    main()
