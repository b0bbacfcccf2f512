"""The C++ tests of tests/cpp: reduction kernels, every all-reduce algorithm under mpirun
against a scalar reference with its measured steps and bytes checked against its cost formula,
the engine's negotiation (controller, response cache, fusion planner) over an in-process control
channel, and the layering of csrc/ (cmake/layers.cmake). Built here with the MPI compiler
wrapper, or a plain C++ compiler where MPI must not be needed, straight from csrc/ (no Python
involved)."""
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import mpi_env, mpirun_command

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
# Every layer below the engine: they build and link without it (cmake/layers.cmake).
CORE_SOURCES = sorted(str(p) for d in ["common", "collectives", "reduce", "transport",
                                       "transport/mpi"] for p in (CSRC / d).glob("*.cc"))


FLAGS = ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-DOMPI_SKIP_MPICXX=1",
         f"-I{CSRC}"]
# (compiler, source) -> object file: several test binaries link the same csrc/ files, each
# compiled once per session (and in parallel: one compiler process a core).
_objects = {}


def compiler_for(mpi):
    if mpi:
        compiler = shutil.which("mpicxx") or shutil.which("mpic++")
        if compiler is None:
            pytest.fail("mpicxx is not on PATH: run scripts/setup.sh")
    else:
        compiler = shutil.which("c++") or shutil.which("g++")
        if compiler is None:
            pytest.fail("no C++ compiler (c++ or g++) on PATH")
    return compiler


def compile_objects(tmp_path_factory, compiler, sources):
    """Object files of `sources`, compiling those not compiled yet with this compiler."""
    missing = [src for src in dict.fromkeys(sources) if (compiler, src) not in _objects]
    if missing:
        out_dir = tmp_path_factory.mktemp("obj")

        def compile_one(index_and_source):
            index, src = index_and_source
            obj = out_dir / f"{index}_{Path(src).stem}.o"
            proc = subprocess.run([compiler, *FLAGS, "-c", src, "-o", str(obj)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            return src, obj, proc

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for src, obj, proc in pool.map(compile_one, enumerate(missing)):
                assert proc.returncode == 0, f"{src}:\n{proc.stdout}"
                _objects[(compiler, src)] = obj
    return [str(_objects[(compiler, src)]) for src in dict.fromkeys(sources)]


def build(tmp_path_factory, test_name, sources, mpi=True):
    """tests/cpp/<test_name>.cc linked with `sources` (MPI's wrapper compiler, or a plain one
    where the code must not need MPI: then MPI's library is not even linked)."""
    compiler = compiler_for(mpi)
    test_source = str(ROOT / "tests/cpp" / f"{test_name}.cc")
    objects = compile_objects(tmp_path_factory, compiler, [*sources, test_source])
    out = tmp_path_factory.mktemp("cpp") / test_name
    proc = subprocess.run([compiler, "-pthread", *objects, "-o", str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout
    return out


@pytest.fixture(scope="module")
def algorithms_binary(tmp_path_factory):
    return build(tmp_path_factory, "test_allreduce_algorithms", CORE_SOURCES)


def test_cpu_reduce_kernels(tmp_path_factory):
    sources = [str(CSRC / "reduce/cpu_reduce.cc"), str(CSRC / "common/types.cc"),
               str(CSRC / "transport/host_memory.cc")]
    binary = build(tmp_path_factory, "test_cpu_reduce", sources)
    proc = subprocess.run([str(binary)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    assert proc.returncode == 0 and " 0 failed" in proc.stdout, proc.stdout[-4000:]


def test_mgwfbp_plan(tmp_path_factory):
    binary = build(tmp_path_factory, "test_mgwfbp_plan", [str(CSRC / "engine/mgwfbp_plan.cc")])
    proc = subprocess.run([str(binary)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    assert proc.returncode == 0 and " 0 failed" in proc.stdout, proc.stdout[-4000:]


# (ranks, virtual node size, torus width): odd and even counts, uneven nodes, partial grids.
CONFIGS = [(2, 1, 2), (3, 2, 2), (5, 2, 3), (6, 4, 2), (7, 3, 2), (8, 4, 3)]


@pytest.mark.parametrize("ranks, local_size, torus_x", CONFIGS)
def test_allreduce_algorithms(algorithms_binary, ranks, local_size, torus_x):
    env = mpi_env({"FUSECOMM_LOCAL_SIZE": str(local_size), "FUSECOMM_TORUS_X": str(torus_x)})
    cmd = mpirun_command(ranks) + ["-x", "FUSECOMM_LOCAL_SIZE", "-x", "FUSECOMM_TORUS_X",
                                   str(algorithms_binary)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    assert proc.returncode == 0 and " 0 failed" in proc.stdout, proc.stdout[-6000:]


@pytest.fixture(scope="module")
def bounded_waits_binary(tmp_path_factory):
    return build(tmp_path_factory, "test_bounded_waits", CORE_SOURCES)


@pytest.mark.parametrize("kind, ranks", [("mpi", 2), ("shm", 2), ("shm", 3)])
def test_data_waits_give_up_at_their_bound(bounded_waits_binary, kind, ranks):
    """A data wait (MPI_Testsome, or the shared segment's synchronization) for a peer that
    never takes part throws its bound's error after the bound, having passed from spinning to
    napping, and aborts the transport."""
    cmd = mpirun_command(ranks) + [str(bounded_waits_binary), kind]
    proc = subprocess.run(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "the wait gave up at its bound" in proc.stdout, proc.stdout


def test_nccl_p2p_grouping_never_deadlocks(tmp_path_factory):
    """The NCCL transport's grouping of Isend/Irecv, run for every algorithm against a model of
    NCCL's group semantics (no GPU needed): no deadlock, exact results."""
    sources = [str(CSRC / f"collectives/{name}.cc") for name in
               ("pipeline", "ring_allreduce", "rhd_allreduce", "hierarchical_allreduce",
                "torus2d_allreduce")]
    sources += [str(CSRC / p) for p in ("common/types.cc", "reduce/cpu_reduce.cc",
                                        "transport/host_memory.cc", "transport/p2p_groups.cc",
                                        "transport/split_topology.cc")]
    binary = build(tmp_path_factory, "test_p2p_groups", sources)
    proc = subprocess.run([str(binary)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    assert proc.returncode == 0 and " 0 failed" in proc.stdout, proc.stdout[-4000:]


def test_negotiation_over_fake_control_channel(tmp_path_factory):
    """Controller, response cache and fusion planner with 1-4 simulated ranks in threads over an
    in-process ControlChannel. Built without MPI: negotiation needs none."""
    sources = [str(p) for p in sorted((CSRC / "common").glob("*.cc"))]
    sources += [str(CSRC / f"engine/{name}.cc") for name in
                ("controller", "response_cache", "wire", "rank_text", "request", "fusion_planner",
                 "mgwfbp_plan", "slot_allreduce")]
    sources += [str(CSRC / "transport/negotiation_slot.cc"), str(CSRC / "reduce/cpu_reduce.cc")]
    binary = build(tmp_path_factory, "test_negotiation", sources, mpi=False)
    proc = subprocess.run([str(binary)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    assert proc.returncode == 0 and " 0 failed" in proc.stdout, proc.stdout[-4000:]


def cmake_executable():
    cmake = shutil.which("cmake")
    if cmake is None:
        try:
            import cmake as cmake_package  # the PyPI cmake package, a build requirement
        except ImportError:
            pytest.fail("cmake is not installed (pip install cmake)")
        cmake = str(Path(cmake_package.CMAKE_BIN_DIR) / "cmake")
    return cmake


def check_layers(csrc):
    return subprocess.run([cmake_executable(), f"-DFUSECOMM_CSRC={csrc}", "-P",
                           str(ROOT / "cmake/layers.cmake")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)


def test_layering_holds():
    """No layer of csrc/ includes a higher one, and only the MPI transport includes <mpi.h>
    (the same check every CMake configure runs)."""
    proc = check_layers(CSRC)
    assert proc.returncode == 0 and "layering: ok" in proc.stdout, proc.stdout[-4000:]


@pytest.mark.parametrize("file, line, complaint", [
    ("transport/comm.h", '#include "engine/engine.h"', "includes engine/engine.h (layer engine)"),
    ("engine/wire.cc", "#include <mpi.h>", "includes <mpi.h>"),
    ("collectives/ring_allreduce.cc", '#include "transport/mpi/mpi_comm.h"',
     "includes transport/mpi/mpi_comm.h (layer transport_mpi)"),
    ("transport/mpi/mpi_comm.cc", '#include "collectives/dispatch.h"',
     "includes collectives/dispatch.h (layer collectives)"),
])
def test_layering_check_catches_violations(tmp_path, file, line, complaint):
    """The check fails, naming the file and the include, for each kind of violation."""
    csrc = tmp_path / "csrc"
    shutil.copytree(CSRC, csrc)
    with open(csrc / file, "a") as f:
        f.write("\n" + line + "\n")
    proc = check_layers(csrc)
    assert proc.returncode != 0 and file in proc.stdout and complaint in proc.stdout, proc.stdout
