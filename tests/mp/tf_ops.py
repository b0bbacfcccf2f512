"""Every fusecomm.tensorflow collective against NumPy references, eagerly for every dtype and
inside tf.function and TF1 graphs for a third of them per rank count, at awkward sizes; gradients through every collective; batches,
variables, objects, barrier and errors across ranks. Each rank regenerates all ranks' data."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tf_common  # noqa: E402  (sets TensorFlow up before it loads)
from tf_common import assert_close  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _util import numpy_dtype, rank_data, run_main  # noqa: E402

import fusecomm  # noqa: E402
import fusecomm.tensorflow as hvd  # noqa: E402

DTYPES = ["uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64", "bfloat16", "bool"]
SIZES = [0, 1, 7, 13, 1021]
GRAPH_SIZES = [0, 1, 13]  # fewer inside tf.function: every new signature is a new trace


def np_reduce(arrays, op):
    stack = np.stack(arrays)
    dtype = stack.dtype
    if dtype == bool:
        return {"sum": stack.any(0), "min": stack.all(0), "max": stack.any(0)}[op]
    wide = stack.astype(np.float64)
    n = len(arrays)
    if op == "avg":
        total = wide.sum(0)
        out = np.trunc(total / n) if dtype.kind in "iu" else total / n
    else:
        out = {"sum": wide.sum(0), "min": wide.min(0), "max": wide.max(0),
               "prod": wide.prod(0)}[op]
    return out.astype(dtype)


OPS = {"avg": hvd.Average, "sum": hvd.Sum, "min": hvd.Min, "max": hvd.Max, "prod": hvd.Product}


def gather_rows(s, r):
    return s if r % 2 == 0 else s // 2


def alltoall_splits(s, src, n):
    return [(src + dst + s) % 3 for dst in range(n)]


def row_slice(rows, r, n):
    """This rank's rows of a reducescatter: the first rows % n ranks get one extra."""
    base, extra = divmod(rows, n)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


class Case:
    """All ranks' inputs for one dtype, the collectives to run, and their references."""

    def __init__(self, dtype_name, sizes, n, r, seed):
        self.dtype_name, self.sizes, self.n, self.r = dtype_name, sizes, n, r
        dt = numpy_dtype(dtype_name)
        self.ops = ["sum", "min", "max"] if dtype_name == "bool" else list(OPS)
        self.all = {}  # key -> list over ranks of the input
        for i, s in enumerate(sizes):
            self.all[("x", s)] = [rank_data(seed + i, q, (s,), dtype_name) for q in range(n)]
            self.all[("g", s)] = [rank_data(seed + 100 + i, q, (gather_rows(s, q), 3),
                                            dtype_name) for q in range(n)]
            self.all[("rs", s)] = [rank_data(seed + 200 + i, q, (s, 2), dtype_name)
                                   for q in range(n)]
            self.all[("a2a", s)] = [rank_data(seed + 300 + i, q,
                                              (sum(alltoall_splits(s, q, n)), 2), dtype_name)
                                    for q in range(n)]
            self.all[("a2a_eq", s)] = [rank_data(seed + 400 + i, q, (n * (s % 3 + 1),),
                                                 dtype_name) for q in range(n)]
        self.dtype = dt

    def inputs(self):
        return {f"{k[0]}_{k[1]}": tf.constant(v[self.r]) for k, v in self.all.items()}

    def run(self, x, shapes=None):
        """The collectives on this rank's inputs; `shapes` collects static shapes at trace."""
        out = {}
        floating = self.dtype.kind == "f" or self.dtype_name == "bfloat16"
        for s in self.sizes:
            xs = x[f"x_{s}"]
            for op in self.ops:
                out[f"{op}_{s}"] = hvd.allreduce(xs, op=OPS[op])
            if floating:
                out[f"scaled_{s}"] = hvd.allreduce(xs, op=hvd.Sum, prescale_factor=0.5,
                                                   postscale_factor=3.0)
            out[f"gather_{s}"] = hvd.allgather(x[f"g_{s}"])
            out[f"bcast_{s}"] = hvd.broadcast(xs, s % self.n)
            if self.dtype_name != "bool":
                out[f"rs_{s}"] = hvd.reducescatter(x[f"rs_{s}"], op=hvd.Sum)
            out[f"a2a_{s}"], out[f"a2a_splits_{s}"] = hvd.alltoall(
                x[f"a2a_{s}"], splits=alltoall_splits(s, self.r, self.n))
            out[f"a2a_eq_{s}"] = hvd.alltoall(x[f"a2a_eq_{s}"])
            if shapes is not None:
                shapes.update({f"{k}": out[k].shape for k in out if k.endswith(f"_{s}")})
        # Batches: several tensors in one submission.
        keys = [f"x_{s}" for s in self.sizes]
        if self.dtype_name != "bool":
            for k, v in zip(keys, hvd.grouped_allreduce([x[k] for k in keys], op=hvd.Sum)):
                out[f"grouped_sum_{k}"] = v
            for k, v in zip(keys, hvd.grouped_reducescatter([x["rs_" + k[2:]] for k in keys],
                                                            op=hvd.Sum)):
                out[f"grouped_rs_{k}"] = v
        for k, v in zip(keys, hvd.grouped_allgather([x["g_" + k[2:]] for k in keys])):
            out[f"grouped_gather_{k}"] = v
        return out

    def references(self):
        ref, n, r = {}, self.n, self.r
        for s in self.sizes:
            xs = self.all[("x", s)]
            for op in self.ops:
                ref[f"{op}_{s}"] = np_reduce(xs, op)
            ref[f"scaled_{s}"] = (np_reduce([a * 0.5 for a in xs], "sum") * 3.0).astype(self.dtype)
            ref[f"gather_{s}"] = np.concatenate(self.all[("g", s)])
            ref[f"bcast_{s}"] = xs[s % n]
            ref[f"rs_{s}"] = np_reduce(self.all[("rs", s)], "sum")[row_slice(s, r, n)]
            chunks = []
            for src in range(n):
                offsets = np.cumsum([0] + alltoall_splits(s, src, n))
                chunks.append(self.all[("a2a", s)][src][offsets[r]:offsets[r + 1]])
            ref[f"a2a_{s}"] = np.concatenate(chunks)
            ref[f"a2a_splits_{s}"] = np.array([alltoall_splits(s, src, n)[r] for src in range(n)],
                                              np.int32)
            k = s % 3 + 1
            ref[f"a2a_eq_{s}"] = np.concatenate([a[r * k:(r + 1) * k]
                                                 for a in self.all[("a2a_eq", s)]])
            ref[f"grouped_sum_x_{s}"] = ref[f"sum_{s}"]
            ref[f"grouped_rs_x_{s}"] = ref[f"rs_{s}"]
            ref[f"grouped_gather_x_{s}"] = ref[f"gather_{s}"]
        return ref

    def check(self, out, mode):
        ref = self.references()
        for key, value in out.items():
            value = np.asarray(value)
            want = ref[key]
            what = f"{mode} {self.dtype_name} {key}"
            assert value.dtype == want.dtype, f"{what}: dtype {value.dtype} != {want.dtype}"
            assert_close(value, want, what, self.dtype_name)

    def check_static_shapes(self, shapes):
        for s in self.sizes:
            for op in self.ops:
                assert shapes[f"{op}_{s}"] == (s,), (op, s, shapes[f"{op}_{s}"])
            assert shapes[f"gather_{s}"].as_list() == [None, 3], shapes[f"gather_{s}"]
            assert shapes[f"bcast_{s}"] == (s,)
            if f"rs_{s}" in shapes:  # known statically: the engine's split rule
                want = row_slice(s, self.r, self.n)
                assert shapes[f"rs_{s}"] == (want.stop - want.start, 2), shapes[f"rs_{s}"]
            assert shapes[f"a2a_splits_{s}"] == (self.n,)


def check_collectives(n, r):
    for j, dtype_name in enumerate(DTYPES):
        case = Case(dtype_name, SIZES, n, r, seed=1000 * j)
        case.check(case.run(case.inputs()), "eager")
        # Tracing dominates the graph modes (over 1 s a dtype on a loaded machine), so each rank
        # count traces a third of the dtypes: the 2-, 3- and 4-rank runs together trace all.
        if j % 3 != n % 3:
            continue
        graph_case = Case(dtype_name, GRAPH_SIZES, n, r, seed=1000 * j + 500)
        shapes = {}
        fn = tf.function(lambda x: graph_case.run(x, shapes))
        graph_case.check(fn(graph_case.inputs()), "tf.function")
        graph_case.check(fn(graph_case.inputs()), "tf.function (second run)")
        assert fn.experimental_get_tracing_count() == 1
        graph_case.check_static_shapes(shapes)
        v1_case = Case(dtype_name, GRAPH_SIZES, n, r, seed=1000 * j + 700)
        with tf.Graph().as_default():  # tf.compat.v1: build, then run in a Session (twice)
            outputs = v1_case.run(v1_case.inputs())
            with tf.compat.v1.Session() as session:  # one collective per run, in key order
                for mode in ("graph", "graph (second run)"):
                    v1_case.check({k: session.run(outputs[k]) for k in sorted(outputs)}, mode)


def check_compression_and_sparse(n, r):
    x = [rank_data(7, q, (31,), "float32") for q in range(n)]
    for comp in (hvd.Compression.fp16, hvd.Compression.bf16):
        for fn in (lambda t: hvd.allreduce(t, compression=comp), tf.function(
                lambda t: hvd.allreduce(t, compression=comp))):
            out = fn(tf.constant(x[r]))
            assert out.dtype == tf.float32
            assert_close(out, np.mean(x, 0), f"allreduce {comp.__name__}",
                         rtol=RTOL_WIRE[comp.__name__])
    # Integers are never narrowed by compression.
    ints = hvd.allreduce(tf.constant([1 << 20, 3], tf.int64), op=hvd.Sum,
                         compression=hvd.Compression.fp16)
    assert ints.dtype == tf.int64 and ints.numpy().tolist() == [n << 20, 3 * n]

    # IndexedSlices: all-gathered values and indices; the dense sum/average matches.
    dense_shape = [6, 2]
    values = [rank_data(8, q, (q + 1, 2), "float32") for q in range(n)]
    indices = [np.arange(q + 1, dtype=np.int64) % 6 for q in range(n)]
    for op, scale in ((hvd.Average, 1.0 / n), (hvd.Sum, 1.0)):
        for fn in (hvd.allreduce, tf.function(hvd.allreduce)):
            out = fn(tf.IndexedSlices(tf.constant(values[r]), tf.constant(indices[r]),
                                      tf.constant(dense_shape, tf.int64)), op=op)
            assert isinstance(out, tf.IndexedSlices)
            want = np.zeros(dense_shape, np.float32)
            for v, i in zip(values, indices):
                np.add.at(want, i, v * scale)
            assert_close(tf.convert_to_tensor(out), want, "IndexedSlices allreduce")
            assert_close(out.indices, np.concatenate(indices), "IndexedSlices indices")

    # Integer IndexedSlices: averaged and scaled as dense integers are (the sum, scaled, then
    # truncated once), not row by row ("Expected uint8, but got 0.5" before).
    for dtype_name in ("uint8", "int32"):
        ints = [rank_data(12, q, (q + 1, 2), dtype_name) for q in range(n)]
        total = np.zeros(dense_shape, np.float64)
        for v, i in zip(ints, indices):
            np.add.at(total, i, v)
        for op, pre, post, want in ((hvd.Average, 1.0, 1.0, np.trunc(total / n)),
                                    (hvd.Sum, 3.0, 0.5, np.trunc(total * 1.5)),
                                    (hvd.Sum, 1.0, 1.0, total)):
            for mode, fn in (("eager", hvd.allreduce), ("tf.function", tf.function(hvd.allreduce))):
                out = fn(tf.IndexedSlices(tf.constant(ints[r]), tf.constant(indices[r]),
                                          tf.constant(dense_shape, tf.int64)), op=op,
                         prescale_factor=pre, postscale_factor=post)
                what = f"{mode} {dtype_name} IndexedSlices op={op} scale={pre * post}"
                assert isinstance(out, tf.IndexedSlices), what
                assert out.values.dtype.name == dtype_name, what
                assert_close(tf.convert_to_tensor(out), want.astype(dtype_name), what)


RTOL_WIRE = {"FP16Compressor": 2e-3, "BF16Compressor": 1.6e-2}


def check_gradients(n, r):
    """Gradients of every rank's loss sum(c_r * y_r), against the analytic values."""
    def c(seed, q, shape):
        return rank_data(seed, q, shape, "float64")

    x = [c(1, q, (5, 3)) for q in range(n)]
    for mode in ("eager", "tf.function", "graph"):
        def grad_of(forward, value, coef):
            if mode == "graph":  # tf.compat.v1: tf.gradients, then a Session runs it
                with tf.Graph().as_default():
                    v = tf.constant(value)
                    grad = tf.gradients(tf.reduce_sum(tf.constant(coef) * forward(v)), v)[0]
                    with tf.compat.v1.Session() as session:
                        return session.run(grad)
            wrap = tf.function if mode == "tf.function" else (lambda f: f)

            @wrap
            def g(value, coef):
                with tf.GradientTape() as tape:
                    tape.watch(value)
                    y = forward(value)
                    loss = tf.reduce_sum(coef * y)
                return tape.gradient(loss, value)
            return g(tf.constant(value), tf.constant(coef)).numpy()

        cs = [c(2, q, (5, 3)) for q in range(n)]
        got = grad_of(lambda v: hvd.allreduce(v, prescale_factor=0.5, postscale_factor=4.0),
                      x[r], cs[r])
        assert_close(got, 2.0 * np.sum(cs, 0) / n, f"{mode} grad allreduce Average")
        got = grad_of(lambda v: hvd.allreduce(v, op=hvd.Sum), x[r], cs[r])
        assert_close(got, np.sum(cs, 0), f"{mode} grad allreduce Sum")
        got = grad_of(lambda v: hvd.grouped_allreduce([v, 2 * v], op=hvd.Sum)[1], x[r], cs[r])
        assert_close(got, 2 * np.sum(cs, 0), f"{mode} grad grouped_allreduce")

        rows = [q + 1 for q in range(n)]
        xg = [c(3, q, (rows[q], 3)) for q in range(n)]
        cg = [c(4, q, (sum(rows), 3)) for q in range(n)]
        start = sum(rows[:r])
        # Horovod's TensorFlow rules: allgather and broadcast average the incoming gradients.
        got = grad_of(hvd.allgather, xg[r], cg[r])
        assert_close(got, np.mean(cg, 0)[start:start + rows[r]], f"{mode} grad allgather")

        root = (n - 1) % n
        got = grad_of(lambda v: hvd.broadcast(v, root), x[r], cs[r])
        assert_close(got, np.mean(cs, 0) if r == root else np.zeros((5, 3)),
                     f"{mode} grad broadcast")

        # reducescatter: the gathered gradients, times the size for Sum (none for Average).
        xr = [c(5, q, (7, 2)) for q in range(n)]
        cr = [c(6, q, (row_slice(7, q, n).stop - row_slice(7, q, n).start, 2)) for q in range(n)]
        got = grad_of(lambda v: hvd.reducescatter(v, op=hvd.Average), xr[r], cr[r])
        assert_close(got, np.concatenate(cr), f"{mode} grad reducescatter Average")
        got = grad_of(lambda v: hvd.reducescatter(v, op=hvd.Sum), xr[r], cr[r])
        assert_close(got, np.concatenate(cr) * n, f"{mode} grad reducescatter Sum")

        splits = [alltoall_splits(2, q, n) for q in range(n)]
        xa = [c(7, q, (sum(splits[q]), 2)) for q in range(n)]
        received = [[splits[src][dst] for src in range(n)] for dst in range(n)]
        ca = [c(8, q, (sum(received[q]), 2)) for q in range(n)]
        got = grad_of(lambda v: hvd.alltoall(v, splits=splits[r])[0], xa[r], ca[r])
        # Row block sent to rank dst sits in dst's output after the blocks of lower ranks.
        want = []
        for dst in range(n):
            off = sum(received[dst][:r])
            want.append(ca[dst][off:off + splits[r][dst]])
        assert_close(got, np.concatenate(want), f"{mode} grad alltoall")


def check_variables_objects_barrier(n, r):
    tf_var = tf.Variable(rank_data(9, r, (4, 3), "float32"))
    k_var = keras.Variable(rank_data(10, r, (5,), "float64"))
    hvd.broadcast_variables([tf_var, k_var], root_rank=n - 1)
    assert_close(tf_var.numpy(), rank_data(9, n - 1, (4, 3), "float32"), "broadcast tf.Variable")
    assert_close(k_var.numpy(), rank_data(10, n - 1, (5,), "float64"), "broadcast keras.Variable")
    v = tf.Variable(rank_data(11, r, (3,), "int32"))

    @tf.function
    def in_graph():
        return hvd.broadcast_([v], 0)

    in_graph()
    assert_close(v.numpy(), rank_data(11, 0, (3,), "int32"), "broadcast_ in tf.function")
    obj = hvd.broadcast_object({"rank": r, "list": list(range(r))}, root_rank=1 % n)
    assert obj == {"rank": 1 % n, "list": list(range(1 % n))}
    assert hvd.allgather_object(("r", r)) == [("r", q) for q in range(n)]
    hvd.barrier()
    tf.function(hvd.barrier)()

    # Independent collectives in one tf.function run in program order on every rank.
    @tf.function
    def two(a, b):
        return hvd.allreduce(a, op=hvd.Sum), hvd.allreduce(b, op=hvd.Sum)

    a, b = two(tf.fill([3], float(r)), tf.fill([5], float(r + 1)))
    assert_close(a, np.full(3, n * (n - 1) / 2, np.float32), "ordered a")
    assert_close(b, np.full(5, n * (n + 1) / 2, np.float32), "ordered b")


def check_process_set(n, r):
    """Collectives and gradient averaging restricted to the first and last rank."""
    if n < 3:
        return
    ps = hvd.add_process_set(hvd.ProcessSet([0, n - 1]))
    try:
        if not ps.included():
            return
        members = (0, n - 1)
        got = hvd.allreduce(tf.fill([4], float(r + 1)), op=hvd.Sum, process_set=ps)
        assert_close(got, np.full(4, 2.0 + n - 1, np.float32), "process set allreduce")
        got = tf.function(lambda t: hvd.allgather(t, process_set=ps))(tf.fill([r + 1, 2], float(r)))
        want = np.concatenate([np.full((q + 1, 2), q, np.float32) for q in members])
        assert_close(got, want, "process set allgather in tf.function")
        got = hvd.broadcast(tf.fill([3], float(r)), n - 1, process_set=ps)  # a global rank
        assert_close(got, np.full(3, n - 1, np.float32), "process set broadcast")
        v = tf.Variable([1.0, 2.0])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(v * (r + 1))
        grad = hvd.DistributedGradientTape(tape, process_set=ps).gradient(loss, [v])[0]
        assert_close(grad, np.full(2, (1 + n) / 2, np.float32), "process set tape")
    finally:
        hvd.remove_process_set(ps)


def check_join(n, r):
    """Rank r has r + 1 steps, then joins; the others' reductions go on with its zeros, eagerly,
    in tf.function and through DistributedGradientTape."""
    step_graph = tf.function(lambda t: hvd.allreduce(t, op=hvd.Sum))
    v = tf.Variable([1.0, 1.0])
    for s in range(r + 1):
        active = [q for q in range(n) if q >= s]
        want = sum(q + 1.0 for q in active)
        got = hvd.allreduce(tf.fill([3], r + 1.0), op=hvd.Sum, name="join.eager")
        assert_close(got, np.full(3, want, np.float32), f"eager step {s} before join")
        assert_close(step_graph(tf.fill([2], r + 1.0)), np.full(2, want, np.float32),
                     f"tf.function step {s} before join")
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(v) * (r + 1)
        grad = hvd.DistributedGradientTape(tape).gradient(loss, [v])[0]
        assert_close(grad, np.full(2, want / n, np.float32), f"tape step {s} before join")
    last = hvd.join() if r % 2 else int(tf.function(hvd.join)())
    assert last == n - 1, last


def check_errors_across_ranks(n, r):
    """Ranks that disagree get an error naming the tensor, eagerly and inside tf.function."""
    shape = [3] if r == 0 else [4]
    try:
        hvd.allreduce(tf.zeros(shape), name="tf_mismatch")
    except fusecomm.CollectiveError as e:
        assert "tf_mismatch" in str(e), e
    else:
        raise AssertionError("mismatched shapes did not raise")

    @tf.function
    def mismatch(t):
        return hvd.allreduce(t, name="tf_mismatch_graph")

    try:
        mismatch(tf.zeros(shape))
    except tf.errors.OpError as e:
        assert "tf_mismatch_graph" in str(e) and "CollectiveError" in str(e), e
    else:
        raise AssertionError("mismatched shapes in tf.function did not raise")
    # Horovod's error types for alltoall splits, eagerly, at trace time (constant splits) and at
    # run time inside a graph (splits computed there).
    bad_splits = [
        (tf.ones([n + 1]), None, tf.errors.InvalidArgumentError),  # rows do not divide by n
        (tf.ones([n - 1]), [1] * n, tf.errors.InvalidArgumentError),  # splits exceed the rows
        (tf.ones([n]), [1.0] * n, ValueError),  # not integers
    ]
    for tensor, splits, exc in bad_splits:
        for mode, fn in (("eager", hvd.alltoall), ("tf.function", tf.function(hvd.alltoall))):
            try:
                fn(tensor, splits=splits)
            except exc as e:
                assert "split" in str(e) or "divide" in str(e), e
            else:
                raise AssertionError(f"{mode} alltoall with splits {splits} did not raise")

    @tf.function
    def computed_splits(t, k):
        return hvd.alltoall(t, splits=tf.fill([n], k))

    try:
        computed_splits(tf.ones([n - 1]), tf.constant(1))
    except tf.errors.InvalidArgumentError as e:
        assert "split" in str(e), e
    else:
        raise AssertionError("run-time alltoall splits error did not raise")
    # The engine keeps working after the error.
    assert_close(hvd.allreduce(tf.ones([2]), op=hvd.Sum), np.full(2, n, np.float32), "after error")


def run_checks(n, r):
    check_collectives(n, r)
    check_compression_and_sparse(n, r)
    check_gradients(n, r)
    check_variables_objects_barrier(n, r)
    check_process_set(n, r)
    check_join(n, r)
    check_errors_across_ranks(n, r)
    hvd.barrier()
    if r == 0:
        print(f"tf_ops OK on {n} ranks", flush=True)


def main():
    hvd.init()
    run_checks(hvd.size(), hvd.rank())
    hvd.shutdown()


if __name__ == "__main__":
    run_main(main)
