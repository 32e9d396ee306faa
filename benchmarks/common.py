"""Shared benchmark plumbing: backends, device sync, interleaved timing, peak memory, machine facts."""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np


class Backend:
    """The array library xpcnn runs on, and PyTorch on the same device as the reference."""

    def __init__(self, name, device=None, dtype="float32"):
        import array_api_compat

        self.name, self.dtype_name = name, dtype
        self.lib = importlib.import_module(name)
        self.torch = importlib.import_module("torch")
        if name == "torch":
            self.device = device or "cpu"
        elif name == "cupy":
            self.device = None
        else:
            self.device = "cpu"
        self.torch_device = self.device if name == "torch" else ("cuda" if name == "cupy" else "cpu")
        self.xp = array_api_compat.array_namespace(self.asarray(np.zeros(1, dtype=np.float32)))

    def asarray(self, a):
        if self.name == "torch":
            return self.lib.asarray(a, device=self.device)
        return self.lib.asarray(a)

    def torch_tensor(self, a, requires_grad=False):
        t = self.torch.tensor(np.asarray(a), device=self.torch_device)
        return t.requires_grad_(requires_grad)

    def sync(self):
        if self.name == "cupy":
            self.lib.cuda.Device().synchronize()
        if self.torch_device != "cpu" and self.torch.cuda.is_available():
            self.torch.cuda.synchronize()

    def peak_memory_mb(self, fn, library):
        """Peak MiB allocated while ``fn`` (running on ``library``) runs: tracemalloc for NumPy (its allocator
        reports there), the CUDA allocators' peak statistics on GPUs, None where no counter exists (PyTorch CPU)."""
        if library == "numpy":
            tracemalloc.start()
            tracemalloc.reset_peak()
            fn()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return peak / 2**20
        if library == "cupy":
            pool = self.lib.get_default_memory_pool()
            pool.free_all_blocks()
            fn()
            self.sync()
            return pool.total_bytes() / 2**20
        if library == "torch" and self.torch_device != "cpu":
            self.torch.cuda.reset_peak_memory_stats()
            fn()
            self.sync()
            return self.torch.cuda.max_memory_allocated() / 2**20
        return None


def time_interleaved(contenders: dict, repeats: int, sync, warmup: int = 1, settle_s: float = 0.2,
                     clock=time.perf_counter):
    """Median, min and max milliseconds of each callable, the contenders taking turns in every round, and the
    rounds' own times (``samples_ms``, for ratios taken within each round: see :func:`paired_ratio`).

    In every round each contender first runs untimed, ``warmup`` calls and at least ``settle_s`` seconds, right
    before its timed call, so that each is timed in its steady state, as in a training loop of its own: the first
    calls after another library has run pay for the switch (that library's worker threads go on spinning on the
    same cores, the contender's own threads have to wake up). benchmarks/README.md, "Method", gives the figures.
    ``clock``: the timed call's clock (``time.process_time``: this process's CPU seconds, steadier on a shared
    machine with one thread per library).
    """
    samples = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start, calls = time.perf_counter(), 0
            while calls < warmup or (calls and time.perf_counter() - start < settle_s):
                fn()
                sync()
                calls += 1
            start = clock()
            fn()
            sync()
            samples[name].append((clock() - start) * 1e3)
    return {name: dict(median_ms=statistics.median(s), min_ms=min(s), max_ms=max(s), samples_ms=s)
            for name, s in samples.items()}


def paired_ratio(ours: dict, reference: dict):
    """The median over rounds of ours / reference within each round: on a shared machine a slow spell tends to
    hit both contenders of one round, so this moves less than the ratio of the medians. None without rounds."""
    pairs = [a / b for a, b in zip(ours.get("samples_ms", ()), reference.get("samples_ms", ())) if b > 0]
    return statistics.median(pairs) if pairs else None


def machine_state(size_mib: int = 64, repeats: int = 5, quick: bool = False):
    """How fast this shared machine is right now, on the host: a large float32 copy (GB/s, memory-bound) and a
    float32 GEMM (GFLOP/s, compute-bound), medians of ``repeats``. Other tenants can halve the copy bandwidth for
    minutes at a time while the GEMM rate barely moves; im2col and pooling are memory-bound, so their times move
    with the copy figure. Taken before and after each run and written with the results. ``quick``: a 4 MiB copy,
    one repeat (the smoke test; the figures then say little)."""
    if quick:
        size_mib, repeats = 4, 1
    src = np.ones(size_mib * 2**18, dtype=np.float32)
    dst = np.empty_like(src)
    a = np.ones((512, 512), dtype=np.float32)

    def median_s(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    copy_s = median_s(lambda: np.copyto(dst, src))
    gemm_s = median_s(lambda: a @ a)
    return dict(copy_gb_s=round(2 * src.nbytes / copy_s / 1e9, 2), gemm_gflop_s=round(2 * 512**3 / gemm_s / 1e9, 1))


def machine_info():
    info = dict(
        machine=platform.machine(),
        processor=platform.processor() or platform.machine(),
        **cpu_model(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        numpy=np.__version__,
    )
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = ", ".join(f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                                 for i in threadpool_info() if i.get("user_api") == "blas")
    except ImportError:
        info["blas"] = "unknown (threadpoolctl not installed)"
    for name in ("torch", "cupy", "array_api_compat", "xpcnn"):
        try:
            info[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    try:
        info["torch_threads"] = importlib.import_module("torch").get_num_threads()
    except ImportError:
        pass
    return info


VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                     "amx_tile", "amx_bf16", "asimd", "sve", "sve2")
"""The /proc/cpuinfo flags worth recording: the vector units BLAS, oneDNN and NumPy's loops choose kernels by."""


def cpu_model() -> dict:
    """``cpu_model`` (the model name) and ``cpu_flags`` (its :data:`VECTOR_EXTENSIONS`), from /proc/cpuinfo on
    Linux; the platform's processor string and no flags elsewhere."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            present = set(value.split())
            flags = [flag for flag in VECTOR_EXTENSIONS if flag in present]
    return dict(cpu_model=model, cpu_flags=flags)


def cpu_summary(info: dict) -> str:
    """One line for a table's header: the CPU model, its vector extensions and the core count."""
    flags = " ".join(info.get("cpu_flags") or []) or "no vector flags known"
    return f"CPU {info.get('cpu_model')} ({flags}), {info.get('cores')} cores"


def output_path(path):
    """``path`` (or None) resolved against the working directory, its folder created and checked writable, before
    any measuring: a bad path fails at once, not after the whole run."""
    if path is None:
        return None
    path = Path(path).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(f"--json {path} is a directory; give a file name")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"--json {path}: cannot write there")
    return path


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)


def print_table(rows, columns):
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def print_markdown(rows, columns):
    """The rows as a Markdown table (for benchmarks/README.md)."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
