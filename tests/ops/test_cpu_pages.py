"""Huge-page advice for packed weights (hf_onebit/ops/cpu/pages.py)."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from hf_onebit.ops import binary_linear
from hf_onebit.ops.cpu import pages
from hf_onebit.formats.packing import pack_signs


def thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "absent"
    return text.split("[")[1].split("]")[0]


def kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def huge_bytes_at(address: int) -> int:
    """AnonHugePages (bytes) of the mapping holding ``address``, from /proc/self/smaps."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1]) * 1024
    return 0


def test_collapses_whole_huge_pages_inside_the_tensor():
    t = torch.randint(0, 256, (7 * pages.HUGE_PAGE,), dtype=torch.uint8)
    before = t.clone()
    done = pages.advise_huge_pages(t)
    assert torch.equal(t, before)  # contents untouched
    assert done % pages.HUGE_PAGE == 0 and done <= t.numel()
    if sys.platform.startswith("linux") and thp_mode() in ("always", "madvise") and kernel_at_least(6, 1):
        # 7 MiB hold at least 2 whole aligned 2 MiB pages, which MADV_COLLAPSE turns into huge pages now
        assert done >= 2 * pages.HUGE_PAGE
        assert huge_bytes_at(t.data_ptr() + t.numel() // 2) >= pages.HUGE_PAGE
    else:
        assert done == 0


def test_small_tensors_and_the_switch(monkeypatch):
    assert pages.advise_huge_pages(torch.zeros(pages.HUGE_PAGE // 2, dtype=torch.uint8)) == 0
    monkeypatch.setenv(pages.HUGE_PAGES_ENV, "0")
    assert pages.advise_huge_pages(torch.zeros(3 * pages.HUGE_PAGE, dtype=torch.uint8)) == 0


def test_advise_once_per_tensor_and_address(monkeypatch):
    calls = []
    monkeypatch.setattr(pages, "advise_huge_pages", lambda t: calls.append(t.data_ptr()) or 0)
    t = torch.zeros(3 * pages.HUGE_PAGE, dtype=torch.uint8)
    pages.advise_once(t)
    pages.advise_once(t)
    assert calls == [t.data_ptr()]
    t.set_(torch.zeros(3 * pages.HUGE_PAGE, dtype=torch.uint8))  # new memory behind the same tensor object
    pages.advise_once(t)
    assert calls[-1] == t.data_ptr() and len(calls) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # the call-plan path and the general path
def test_kernel_call_advises_large_weights_that_stay_and_stays_exact(monkeypatch, dtype):
    """The CPU backend advises a weight over 2 MiB on its second call (once) and the result is unchanged."""
    seen = []
    real = pages.advise_huge_pages
    monkeypatch.setattr(pages, "advise_huge_pages", lambda t: seen.append(t.data_ptr()) or real(t))
    K, N = 4096, 4608  # 2.25 MiB of sign bits
    gen = torch.Generator().manual_seed(0)
    weight = pack_signs(torch.randn(N, K, generator=gen))
    g, h = torch.rand(K, generator=gen) + 0.5, torch.rand(N, generator=gen) * 0.02
    x = torch.randn(2, K, generator=gen).to(dtype)
    first = binary_linear(x, weight, g, h, None, K, 8, backend="cpu")
    assert seen == []  # first call: only noted
    for _ in range(3):
        got = binary_linear(x, weight, g, h, None, K, 8, backend="cpu")
        assert torch.equal(got, first)  # same bytes, other pages: bit-identical results
    assert seen == [weight.data_ptr()]
    expected = binary_linear(x, weight, g, h, None, K, 8, backend="reference")
    torch.testing.assert_close(got.float(), expected.float(), rtol=1e-2, atol=1e-2)
    small = pack_signs(torch.randn(8, K, generator=gen))
    binary_linear(x, small, g, h[:8], None, K, 8, backend="cpu")
    assert seen == [weight.data_ptr()]  # under 2 MiB: not advised


def test_weights_made_afresh_for_each_call_are_never_collapsed(monkeypatch):
    """Disk offload materialises a layer's weight as a new tensor for every forward: collapsing each of them would
    cost milliseconds per call, so only a tensor seen twice at the same address is advised."""
    seen = []
    monkeypatch.setattr(pages, "advise_huge_pages", lambda t: seen.append(t.data_ptr()) or 0)
    K, N = 4096, 4608
    gen = torch.Generator().manual_seed(1)
    signs = torch.randn(N, K, generator=gen)
    g, h = torch.rand(K, generator=gen) + 0.5, torch.rand(N, generator=gen) * 0.02
    x = torch.randn(1, K, generator=gen)
    for _ in range(3):
        binary_linear(x, pack_signs(signs), g, h, None, K, 8, backend="cpu")
    assert seen == []
