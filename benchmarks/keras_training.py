"""Keras 3 training throughput with fusecomm's DistributedOptimizer and with TensorFlow's
MultiWorkerMirroredStrategy (ring collectives), at several rank counts; and what crossing from
TensorFlow to the engine costs.

    python benchmarks/keras_training.py [--ranks 1 2 4] [--json out.jsonl] [--plot out.png]

fusecomm: one mpirun launch per rank count. MWMS: one process per worker, started here with
TF_CONFIG pointing at localhost ports. Both train the same MLP on synthetic data with model.fit
(weak scaling: a fixed batch per rank) and report the slowest rank's mean step time.

Copy cost: all-reduce of N MB on 2 ranks through the NumPy API (no TensorFlow), eagerly through
fusecomm.tensorflow (zero-copy view in, DLPack out), inside tf.function (one numpy_function),
and two alternatives fusecomm does not use: py_function inside tf.function, and eager
.numpy() + convert_to_tensor (a copy each way)."""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

from launching import run_launch  # noqa: E402  (benchmarks/)
from throughput_plot import plot_throughput  # noqa: E402  (benchmarks/)

FRAMEWORKS = ("fusecomm", "mwms")
RESULT = "RESULT "
COPY_METHODS = ("numpy", "tf-eager", "tf.function", "tf.function+py_function", "eager .numpy()")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=64, help="samples per rank per step")
    p.add_argument("--width", type=int, default=512, help="input and hidden width")
    p.add_argument("--layers", type=int, default=3, help="hidden layers")
    p.add_argument("--copy-sizes-mb", type=float, nargs="*", default=[1, 16, 64],
                   help="all-reduce sizes for the copy-cost table (none: skip it)")
    p.add_argument("--copy-reps", type=int, default=10)
    p.add_argument("--json", help="append one JSON line per measurement to this file")
    p.add_argument("--plot", help="write a PNG of throughput and efficiency to this file")
    p.add_argument("--timeout", type=int, default=400, help="seconds per launch")
    p.add_argument("--worker", choices=("fusecomm", "mwms", "copy"), help=argparse.SUPPRESS)
    p.add_argument("--ranks-in-run", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- workers ------------------------------------------------------------------------------------


def setup_tensorflow(ranks):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # Ranks share the machine's cores.
    tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // ranks))
    tf.config.threading.set_inter_op_parallelism_threads(2)
    return tf


def build_model(args):
    import keras

    keras.utils.set_random_seed(0)
    layers = [keras.Input((args.width,))]
    layers += [keras.layers.Dense(args.width, activation="relu") for _ in range(args.layers)]
    return keras.Sequential(layers + [keras.layers.Dense(10)])


def synthetic_data(args, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = args.batch_size * 8
    return (rng.normal(size=(n, args.width)).astype(np.float32),
            rng.integers(0, 10, size=n).astype(np.int32))


def step_timer(warmup):
    """A Keras callback measuring the mean time of the batches after the warm-up (defined here
    so that the launcher never imports Keras)."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def mean_step(self):
            timed = self.ends[max(0, warmup - 1):]
            return (timed[-1] - timed[0]) / (len(timed) - 1)

    return StepTimer()


def compile_model(model, optimizer):
    import keras

    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def timed_fit(model, args, data, callbacks):
    timer = step_timer(args.warmup)
    model.fit(data, epochs=1, steps_per_epoch=args.warmup + args.steps, verbose=0,
              callbacks=callbacks + [timer])
    return timer.mean_step()


def worker_fusecomm(args):
    tf = setup_tensorflow(args.ranks_in_run)
    import keras
    import numpy as np

    import fusecomm.tensorflow.keras as hvd

    hvd.init()
    x, y = synthetic_data(args, hvd.rank())
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(args.batch_size)
    model = build_model(args)
    compile_model(model, hvd.DistributedOptimizer(keras.optimizers.SGD(0.01, momentum=0.9)))
    step = timed_fit(model, args, data, [hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    slowest = float(np.asarray(hvd.allreduce(np.array([step]), op=hvd.Max, name="slowest"))[0])
    if hvd.rank() == 0:
        emit(framework="fusecomm", ranks=hvd.size(), step_time_s=slowest,
             model_params=model.count_params())
    hvd.shutdown()


def worker_mwms(args):
    tf = setup_tensorflow(args.ranks_in_run)
    import keras

    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    n = strategy.num_replicas_in_sync
    x, y = synthetic_data(args, task)
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(args.batch_size * n)
    shard = tf.data.Options()
    shard.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = data.with_options(shard)
    with strategy.scope():  # Keras 3: build and compile in the scope, fit outside it
        model = build_model(args)
        compile_model(model, keras.optimizers.SGD(0.01, momentum=0.9))
        model.optimizer.build(model.trainable_variables)
    if n > 1:
        work_around_keras_multi_worker_bugs(model)
    step = timed_fit(model, args, data, [])
    # Synchronous training: every worker sees about the same step time; report the slowest.
    steps = strategy.gather(strategy.run(lambda: tf.constant([step], tf.float64)), axis=0)
    slowest = tf.reduce_max(steps)
    if task == 0:
        emit(framework="mwms", ranks=n, step_time_s=float(slowest),
             model_params=model.count_params())


def work_around_keras_multi_worker_bugs(model):
    """Keras 3.15's model.fit fails under MultiWorkerMirroredStrategy with more than one worker:
    (1) its symbolic build reduces the (x, y) batch tuple with strategy.reduce, which MWMS cannot
    convert; (2) it averages every per-replica scalar metric with reduce("MEAN", axis=0), which
    has no axis 0. The model and optimizer are built already, so (1) is skipped, and (2) averages
    over replicas without an axis. Only the logged metrics go through these paths."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean"):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica


def worker_copy(args):
    """Median all-reduce time per size and way of crossing from TensorFlow to the engine."""
    tf = setup_tensorflow(args.ranks_in_run)
    import numpy as np

    import fusecomm
    import fusecomm.tensorflow as hvd

    hvd.init()
    graph = tf.function(lambda t: hvd.allreduce(t, name="copy.graph"))

    def via_py_function(t):
        return tf.py_function(lambda a: fusecomm.allreduce(a.numpy(), name="copy.py"), [t],
                              tf.float32)

    py_graph = tf.function(via_py_function)
    for mb in args.copy_sizes_mb:
        array = np.random.default_rng(0).normal(size=int(mb * (1 << 20)) // 4).astype(np.float32)
        tensor = tf.constant(array)
        ways = {
            "numpy": lambda: fusecomm.allreduce(array, name="copy.numpy"),
            "tf-eager": lambda: hvd.allreduce(tensor, name="copy.eager"),
            "tf.function": lambda: graph(tensor),
            "tf.function+py_function": lambda: py_graph(tensor),
            "eager .numpy()": lambda: tf.convert_to_tensor(
                fusecomm.allreduce(tensor.numpy(), name="copy.naive")),
        }
        for method in COPY_METHODS:
            run = ways[method]
            for _ in range(2):
                np.asarray(run())  # warm-up: tracing, response cache
            times = []
            for _ in range(args.copy_reps):
                hvd.barrier()
                start = time.perf_counter()
                np.asarray(run())  # np.asarray waits for the value
                times.append(time.perf_counter() - start)
            slowest = fusecomm.allreduce(np.array([statistics.median(times)]), op=fusecomm.Max,
                                         name="copy.slowest")[0]
            if hvd.rank() == 0:
                emit(kind="copy", size_mb=mb, method=method, ranks=hvd.size(),
                     time_s=float(slowest))
    hvd.shutdown()


def emit(**result):
    print(RESULT + json.dumps(result), flush=True)


# ---- launcher -----------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(args, role, ranks):
    forwarded = ["--steps", args.steps, "--warmup", args.warmup, "--batch-size", args.batch_size,
                 "--width", args.width, "--layers", args.layers, "--copy-reps", args.copy_reps,
                 "--ranks-in-run", ranks, "--copy-sizes-mb", *args.copy_sizes_mb]
    return [sys.executable, os.path.abspath(__file__), "--worker", role, *map(str, forwarded)]


def base_env():
    # fusecomm comes from the environment (installed, or PYTHONPATH for a source build).
    return dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")


def results_of(output, what):
    found = [json.loads(line[len(RESULT):]) for line in output.splitlines()
             if line.startswith(RESULT)]
    if not found:
        sys.exit(f"{what} reported nothing:\n{output[-4000:]}")
    return found


def launch_mpirun(args, role, ranks):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        sys.exit("mpirun is not on PATH (Open MPI is needed to launch the ranks)")
    env = base_env()
    # Ranks may outnumber cores: yield in MPI waits instead of spinning.
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # No core binding: Open MPI binds each of up to 2 ranks to one core, which would leave a
    # 1-rank run half the machine that the MWMS processes (never bound) get.
    cmd = [mpirun, "--oversubscribe", "--bind-to", "none", "-np", str(ranks),
           *worker_command(args, role, ranks)]
    what = f"{role} on {ranks} ranks"
    return results_of(run_launch(cmd, env, args.timeout, what), what)


def launch_mwms(args, ranks):
    workers = [f"127.0.0.1:{free_port()}" for _ in range(ranks)]
    procs = []
    for index in range(ranks):
        env = base_env()
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                       "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(worker_command(args, "mwms", ranks), env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs, deadline = [], time.monotonic() + args.timeout
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        sys.exit(f"MWMS on {ranks} workers did not finish in {args.timeout}s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    if any(p.returncode for p in procs):
        sys.exit(f"MWMS on {ranks} workers failed:\n" + "\n".join(o[-2000:] for o in outputs))
    return results_of(outputs[0], f"MWMS on {ranks} workers")


def training_report(args, results):
    base = {r["framework"]: r["samples_per_s"] for r in results if r["ranks"] == 1}
    header = (f"{'ranks':>5}  {'framework':<9}  {'step ms':>8}  {'samples/s':>10}  "
              f"{'efficiency':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        one = base.get(r["framework"])
        r["efficiency"] = r["samples_per_s"] / (r["ranks"] * one) if one else None
        eff = f"{r['efficiency']:.2f}" if one else "n/a"
        print(f"{r['ranks']:>5}  {r['framework']:<9}  {r['step_time_s'] * 1e3:>8.1f}  "
              f"{r['samples_per_s']:>10.1f}  {eff:>10}")
    print(f"model: MLP {args.layers}x{args.width} ({results[0]['model_params'] / 1e6:.2f}M "
          f"parameters), batch {args.batch_size} per rank, {args.steps} timed steps, "
          f"{os.cpu_count()} CPU cores shared by all ranks")


def copy_report(results):
    print("\nall-reduce of N MB float32 on 2 ranks: median time of the slowest rank")
    header = f"{'MB':>6}  {'way':<24}  {'ms':>8}  {'GB/s':>7}  {'vs numpy':>8}"
    print(header)
    print("-" * len(header))
    numpy_time = {r["size_mb"]: r["time_s"] for r in results if r["method"] == "numpy"}
    for r in results:
        r["overhead_vs_numpy"] = r["time_s"] / numpy_time[r["size_mb"]]
        gbs = r["size_mb"] * (1 << 20) / r["time_s"] / 1e9
        print(f"{r['size_mb']:>6g}  {r['method']:<24}  {r['time_s'] * 1e3:>8.2f}  {gbs:>7.2f}  "
              f"{r['overhead_vs_numpy']:>7.2f}x")


def plot(path, results):
    plot_throughput(path, results, FRAMEWORKS, "Keras 3 training throughput", "efficiency")


def main():
    args = parse_args()
    if args.worker:
        return {"fusecomm": worker_fusecomm, "mwms": worker_mwms, "copy": worker_copy}[
            args.worker](args)
    training = []
    for ranks in args.ranks:
        for framework in args.frameworks:
            runs = launch_mpirun(args, "fusecomm", ranks) if framework == "fusecomm" else \
                launch_mwms(args, ranks)
            for r in runs:
                r["samples_per_s"] = args.batch_size * ranks / r["step_time_s"]
                training.append(r)
    training_report(args, training)
    copies = launch_mpirun(args, "copy", 2) if args.copy_sizes_mb else []
    if copies:
        copy_report(copies)
    if args.json:
        with open(args.json, "a") as f:
            for r in training:
                f.write(json.dumps(dict(benchmark="keras_training", kind="training",
                                        batch_per_rank=args.batch_size, steps=args.steps,
                                        **r)) + "\n")
            for r in copies:
                f.write(json.dumps(dict(benchmark="keras_training", **r)) + "\n")
    if args.plot:
        plot(args.plot, training)


if __name__ == "__main__":
    main()
