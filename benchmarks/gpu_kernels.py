"""Fusion-buffer copy kernels on one GPU: CudaBatchedScaledCopy moving 100 tensors of mixed sizes
(64 MiB and 256 MiB of float32 in all) into and out of a fusion buffer, with pre/post-scaling and
float16/bfloat16 casts, as a fraction of one cudaMemcpyAsync device-to-device with the same
read + write traffic on the same GPU (CUDA-event timing, warm-up, median of repeats).

    python benchmarks/gpu_kernels.py --out docs/bench [--total-mib 64,256] [--repeats 30]
    python benchmarks/gpu_kernels.py --compile-only     # build only (no GPU needed)

Builds benchmarks/gpu_kernels.cu with nvcc straight from csrc/, prints a table and writes
<out>/gpu_kernels.jsonl (one case per line, each with the device)."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
SOURCES = [CSRC / "reduce/cuda_kernels.cu", CSRC / "common/types.cc",
           ROOT / "benchmarks/gpu_kernels.cu"]
# Ampere and Hopper native code plus PTX for newer GPUs; --arch replaces it (e.g. -arch=native).
ARCH_FLAGS = "-gencode arch=compute_80,code=[sm_80,compute_80] -gencode arch=compute_90,code=sm_90"


def find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin/nvcc").is_file():
            return str(Path(home) / "bin/nvcc")
    sys.exit("nvcc not found (not on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin)")


def build(build_dir, arch_flags):
    binary = Path(build_dir) / "gpu_kernels"
    cmd = [find_nvcc(), "-std=c++17", "-O3", f"-I{CSRC}", *arch_flags.split(),
           "-Xcompiler", "-Wall,-Wextra", *map(str, SOURCES), "-o", str(binary)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return binary


def table(device, rows):
    lines = [f"device: {device['device']} (sm_{device['sm']}, {device['multiprocessors']} SMs)",
             "| case | src -> dst | factor | total MiB | time (us) | GB/s (read+write) "
             "| memcpy GB/s | fraction of memcpy | a memcpy per tensor (us) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per_tensor = "" if r["per_tensor_memcpy_us"] is None else f"{r['per_tensor_memcpy_us']:.1f}"
        lines.append(f"| {r['case']} | {r['src']} -> {r['dst']} | {r['factor']:g} | "
                     f"{r['total_mib']} | {r['time_us']:.1f} | {r['traffic_gbps']:.0f} | "
                     f"{r['memcpy_traffic_gbps']:.0f} | {r['fraction_of_memcpy']:.2f} | "
                     f"{per_tensor} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/bench", help="directory for gpu_kernels.jsonl")
    parser.add_argument("--compile-only", action="store_true",
                        help="build the benchmark and stop (needs nvcc, not a GPU)")
    parser.add_argument("--total-mib", default="64,256")
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--arch", default=ARCH_FLAGS, help="nvcc architecture flags")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fusecomm_gpu_bench_") as build_dir:
        binary = build(build_dir, args.arch)
        if args.compile_only:
            print(f"compiled {binary.name} OK")
            return
        cmd = [str(binary), "--total-mib", args.total_mib, "--tensors", str(args.tensors),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"gpu_kernels exited {proc.returncode}\n{proc.stdout}")
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    device, rows = records[0], records[1:]
    for row in rows:
        row["device"] = device["device"]
    print("\n".join(table(device, rows)))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "gpu_kernels.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {jsonl}")


if __name__ == "__main__":
    main()
