#!/usr/bin/env bash
# The AArch64 cross compiler and qemu-user that tests/ops/test_cpu_isa_cross.py needs to check the NEON kernels on an
# x86-64 machine. Installs them with apt-get when they are missing and this is a Debian/Ubuntu machine where we are
# root; otherwise says that the test will be skipped. Never fails the caller.
set -uo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
if have aarch64-linux-gnu-gcc && { have qemu-aarch64-static || have qemu-aarch64; }; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && have apt-get && [ "$(uname -m)" = "x86_64" ]; then
  echo "hf_onebit test setup: installing the AArch64 cross compiler and qemu-user (NEON kernel test)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static >/dev/null 2>&1 ||
      echo "hf_onebit test setup: apt-get could not install them; the NEON kernel test will be skipped"
  fi
else
  echo "hf_onebit test setup: no aarch64-linux-gnu-gcc / qemu-aarch64 (install gcc-aarch64-linux-gnu and" \
       "qemu-user-static); the NEON kernel test will be skipped"
fi
exit 0
