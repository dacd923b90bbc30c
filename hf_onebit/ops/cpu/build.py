"""Compile the CPU kernel library once per source/flag set into a per-user cache, safely across processes.

The library is plain C (no libtorch), built with the system compiler (``$CC``, default ``cc``) the first time a kernel
runs. The output lives in ``<cache root>/cpu-<hash>/`` (:func:`hf_onebit.files.registry.cache_root`: ``$HF_ONEBIT_CACHE``,
else ``~/.cache/hf_onebit``), where the hash covers the sources, the flags and the compiler name, so an upgrade
rebuilds and two versions never share a file. A file lock (:func:`hf_onebit.files.registry.file_lock`) serialises concurrent
builds; the finished library is moved into place atomically.

Each SIMD variant is its own translation unit with its own flags (never ``-march=native``): a variant the compiler
cannot build is left out (the driver is told by ``-DONEBIT_HAVE_<ISA>``), and the driver picks among the compiled
variants at run time with ``__builtin_cpu_supports``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ...files.registry import cache_root as registry_cache_root, file_lock

CSRC = Path(__file__).with_name("csrc")
LIBRARY_NAME = "libhf_onebit_cpu.so"
# -fno-trapping-math: no floating-point exception is ever read; without it GCC keeps branches whose arms divide as
# control flow and leaves such loops scalar (the progressive sign's tanh, csrc/progressive.h)
BASE_FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
              "-fno-strict-aliasing", "-Wall"]
THREAD_FLAGS = ["-pthread"]
OPENMP_FLAGS = ["-fopenmp"]
BUILD_TIMEOUT_S = 300
#: a cached build of other sources or flags (an older hf_onebit, another compiler) unused for this long is removed
#: when a new build is made; a build's use is recorded once per process (the library file's mtime)
STALE_DAYS = 30

# Sources of the baseline unit (binary and ternary kernels), compiled with no ISA flags.
PORTABLE_SOURCES = ("kernels_portable.c", "ternary_portable.c", "ternary5.c", "lut.c")
# (sources, flags, define) of the optional SIMD units, x86-64 only; a unit is left out unless all its sources compile.
X86_UNITS = (
    (
        ("kernels_avx2.c", "ternary_avx2.c", "lut_avx2.c", "gemv_avx2.c", "attention_avx2.c"),
        ["-mavx2", "-mfma"],
        "ONEBIT_HAVE_AVX2",
    ),
    (
        ("kernels_avx512.c", "ternary_avx512.c", "gemv_avx512.c", "attention_avx512.c"),
        ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
        "ONEBIT_HAVE_AVX512",
    ),
    (  # the t5 ternary kernel (vpermi2b); its CPU check is in the driver
        ("ternary5_avx512.c",),
        ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx512vbmi"],
        "ONEBIT_HAVE_AVX512_VBMI",
    ),
    (
        ("kernels_amx.c",),
        ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mamx-tile", "-mamx-int8", "-mamx-bf16"],
        "ONEBIT_HAVE_AMX",
    ),
)


# The same for AArch64: NEON is baseline there; the dotprod unit needs ARMv8.2 (its CPU check is in the driver).
ARM_UNITS = (
    (("kernels_neon.c",), [], "ONEBIT_HAVE_NEON"),
    (("kernels_neon_dot.c",), ["-march=armv8.2-a+dotprod"], "ONEBIT_HAVE_NEON_DOT"),
)


class BuildError(RuntimeError):
    """The kernel library could not be compiled (no compiler, or the compiler failed)."""


def use_openmp() -> bool:
    """OpenMP unless ``HF_ONEBIT_CPU_OPENMP=0`` (which builds the pthread-pool variant, e.g. to test it)."""
    return os.environ.get("HF_ONEBIT_CPU_OPENMP", "1") != "0"


def compiler() -> str:
    return os.environ.get("CC") or "cc"


def cache_root() -> Path:
    """The package's one cache root (:func:`hf_onebit.files.registry.cache_root`) as a Path."""
    return Path(registry_cache_root())


def optional_units(machine: str | None = None) -> tuple:
    """The SIMD units for ``machine`` (``platform.machine()`` by default): x86-64, AArch64, or none."""
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        return X86_UNITS
    if machine in ("aarch64", "arm64"):
        return ARM_UNITS
    return ()


def build_key() -> str:
    digest = hashlib.sha256()
    digest.update(compiler().encode())
    digest.update(b"openmp" if use_openmp() else b"pthreads")
    units = (PORTABLE_SOURCES, optional_units())
    digest.update(repr((BASE_FLAGS, THREAD_FLAGS, OPENMP_FLAGS, units, platform.machine())).encode())
    for path in sorted(CSRC.glob("*.[ch]")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def library_path() -> Path:
    return cache_root() / f"cpu-{build_key()}" / LIBRARY_NAME


def _run(args: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except FileNotFoundError:
        raise BuildError(f"compiler {args[0]!r} not found (set CC to a C compiler)") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{' '.join(args)} took more than {BUILD_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(args)} failed:\n{proc.stderr.strip()[-2000:]}")


def compile_library(workdir: Path, cc: str | None = None, machine: str | None = None,
                    openmp: bool | None = None) -> Path:
    """Compile the library into ``workdir`` and return its path: with ``cc`` (default :func:`compiler`) for
    ``machine`` (default this one: its SIMD units, :func:`optional_units`), with OpenMP unless ``openmp`` is False
    (default :func:`use_openmp`). A cross compiler and ``machine="aarch64"`` build the AArch64 library (the NEON
    kernels' exactness test runs it under qemu-user)."""
    cc = cc or compiler()
    openmp = use_openmp() if openmp is None else openmp
    include = ["-I", str(CSRC)]
    objects, defines = [], []
    for source in PORTABLE_SOURCES:
        _run([cc, *BASE_FLAGS, *include, "-c", str(CSRC / source), "-o", source.replace(".c", ".o")], workdir)
        objects.append(source.replace(".c", ".o"))
    for sources, flags, define in optional_units(machine):
        unit = [source.replace(".c", ".o") for source in sources]
        try:
            for source, obj in zip(sources, unit):
                _run([cc, *BASE_FLAGS, *flags, *include, "-c", str(CSRC / source), "-o", obj], workdir)
        except BuildError:
            continue  # this compiler cannot target the ISA: the library simply lacks that variant
        objects.extend(unit)
        defines.append(f"-D{define}")
    out = workdir / LIBRARY_NAME
    driver = ["pool.c", "onebit.c", "train.c", "gemv.c", "attention.c", "fpenv.c"]
    link = ["-shared", *(source[:-2] + ".o" for source in driver), *objects, "-o", LIBRARY_NAME, "-lm"]
    try:
        if not openmp:
            raise BuildError("OpenMP disabled (HF_ONEBIT_CPU_OPENMP=0 or openmp=False)")
        for source in driver:
            _run([cc, *BASE_FLAGS, *OPENMP_FLAGS, *defines, *include, "-c", str(CSRC / source), "-o", source[:-2] + ".o"], workdir)
        _run([cc, *OPENMP_FLAGS, *link], workdir)
    except BuildError:
        # No OpenMP (e.g. Apple clang): the pool falls back to its own pthreads.
        for source in driver:
            _run([cc, *BASE_FLAGS, *THREAD_FLAGS, *defines, *include, "-c", str(CSRC / source), "-o", source[:-2] + ".o"], workdir)
        _run([cc, *THREAD_FLAGS, *link], workdir)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def is_intact(library: Path) -> bool:
    """Whether ``library`` is exactly the file its build recorded (size and sha256 in ``<library>.sha256``).

    A truncated or altered shared library must never reach ``dlopen``: mapping a file shorter than its ELF headers
    say kills the process with SIGBUS, before any Python error could be raised."""
    try:
        recorded = _manifest(library).read_text().split()
        return len(recorded) == 2 and int(recorded[1]) == library.stat().st_size and recorded[0] == _digest(library)
    except (OSError, ValueError):
        return False


def build_library() -> Path:
    """Return the path of the compiled library, building it first if this source/flag set has not been built (or its
    cached file is not intact: :func:`is_intact`)."""
    target = library_path()
    if target.exists() and is_intact(target):
        _mark_used(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / "build.lock"):
        if target.exists() and is_intact(target):  # another process built it while we waited
            return target
        if target.exists():
            print(f"hf_onebit: the cached CPU kernel library {target} is damaged (size or checksum differs from "
                  "its build); rebuilding it", file=sys.stderr)
        else:
            print(f"hf_onebit: compiling the CPU kernels (once per hf_onebit version and compiler, ~20 s) into "
                  f"{target.parent}", file=sys.stderr)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=target.parent, prefix="build-") as tmp:
            built = compile_library(Path(tmp))
            staged = target.with_suffix(".so.tmp")
            shutil.copy2(built, staged)
            manifest = target.with_name(target.name + ".sha256.tmp")
            manifest.write_text(f"{_digest(staged)} {staged.stat().st_size}\n")
            # the manifest first: a library without a matching manifest is rebuilt, never loaded
            os.replace(manifest, _manifest(target))
            os.replace(staged, target)
        print(f"hf_onebit: CPU kernels compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    prune_stale_builds(keep=target.parent)
    return target


def _mark_used(library: Path) -> None:
    try:
        os.utime(library)
    except OSError:  # a read-only cache still works
        pass


def prune_stale_builds(keep: Path, max_age_days: float = STALE_DAYS) -> list[Path]:
    """Remove the ``cpu-*`` build folders beside ``keep`` whose newest file is older than ``max_age_days``.

    Each source/flag set builds into its own folder, so upgrades would otherwise leave every old library behind.
    A folder whose library was loaded (or built) recently is kept; a process that still has an old library loaded
    is unaffected (the mapping outlives the file). Returns the folders removed."""
    cutoff = time.time() - max_age_days * 86400
    removed = []
    for folder in keep.parent.glob("cpu-*"):
        if folder == keep or not folder.is_dir():
            continue
        try:
            newest = max((p.stat().st_mtime for p in folder.iterdir()), default=folder.stat().st_mtime)
        except OSError:
            continue
        if newest < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed

