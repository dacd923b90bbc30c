"""Every ISA variant of the CPU kernel library against the portable one, in C (tests/ops/csrc/isa_check.c): the x86
variants this CPU runs, natively; the AArch64 NEON variants (baseline and dotprod) cross-compiled and run under
qemu-user, where torch is not available. Their speed is not measured on this machine; exactness is."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from hf_onebit.ops.cpu import binding
from hf_onebit.ops.cpu.build import ARM_UNITS, CSRC, build_library, compile_library, optional_units

HARNESS = Path(__file__).with_name("csrc") / "isa_check.c"
CROSS_CC = "aarch64-linux-gnu-gcc"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"


def _qemu() -> str | None:
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def _build_harness(cc: str, library: Path, out: Path) -> Path:
    exe = out / "isa_check"
    subprocess.run([cc, "-O2", "-std=gnu11", "-I", str(CSRC), str(HARNESS), str(library),
                    f"-Wl,-rpath,{library.parent}", "-lm", "-o", str(exe)], check=True, capture_output=True, text=True)
    return exe


def _check(command: list[str], env: dict | None = None) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
    assert " 0 failures" in proc.stdout, proc.stdout[-4000:]
    return proc.stdout


def test_aarch64_units_are_the_neon_kernels():
    assert optional_units("aarch64") == ARM_UNITS == optional_units("arm64")
    assert [unit[2] for unit in ARM_UNITS] == ["ONEBIT_HAVE_NEON", "ONEBIT_HAVE_NEON_DOT"]
    assert optional_units("riscv64") == ()
    assert binding.ISA_NAMES[4:] == ("neon", "neon_dot")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="cross-checks AArch64 from x86-64")
def test_neon_kernels_match_portable_under_qemu(tmp_path):
    qemu = _qemu()
    if shutil.which(CROSS_CC) is None or qemu is None or not Path(AARCH64_SYSROOT).is_dir():
        pytest.skip(f"needs {CROSS_CC} and qemu-aarch64 (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross "
                    "qemu-user-static; scripts/cross_tools.sh installs them when run as root)")
    library = compile_library(tmp_path, cc=CROSS_CC, machine="aarch64")
    exe = _build_harness(CROSS_CC, library, tmp_path)
    env = dict(os.environ, QEMU_LD_PREFIX=AARCH64_SYSROOT)
    neon, neon_dot = binding.ISA_NAMES.index("neon"), binding.ISA_NAMES.index("neon_dot")
    # qemu's default CPU model has the dot product, so both units run (the harness fails on an unsupported id)
    out = _check([qemu, str(exe), str(neon), str(neon_dot)], env)
    assert "isa_check: " in out


def test_x86_kernels_match_portable_in_c(tmp_path):
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler {cc!r}")
    exe = _build_harness(cc, build_library(), tmp_path)  # the library the package itself loads
    isas = [str(binding.ISA_NAMES.index(name)) for name in binding.supported_isas() if name != "portable"]
    if not isas:
        pytest.skip("this CPU runs only the portable variant")
    _check([str(exe), *isas])
