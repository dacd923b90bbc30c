"""Denormal floats flushed to zero on every thread of torch's pool (hf_onebit.ops.cpu.fpenv)."""

import pytest
import torch

from hf_onebit.ops.cpu.binding import library
from hf_onebit.ops.cpu.fpenv import set_flush_denormal

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False),
                                reason="torch has no flush-to-zero switch on this CPU (only x86 has one)")

N = 1 << 20  # elements: enough for torch to split an elementwise product over its threads


def denormal_fraction() -> float:
    """Fraction of a product of float32 denormals (1e-40 each) that stays nonzero: 0 where every thread flushes."""
    return float((torch.full((N,), 1e-30) * 1e-10).ne(0).float().mean())


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    set_flush_denormal(False)
    torch.set_num_threads(before)


def test_every_thread_flushes_then_computes_denormals_again(two_threads):
    if library() is None:
        pytest.skip("the CPU kernel library is unavailable (no C compiler)")
    assert denormal_fraction() == 1.0
    assert set_flush_denormal(True) == 2
    assert denormal_fraction() == 0.0
    assert set_flush_denormal(False) == 2
    assert denormal_fraction() == 1.0


def test_torch_alone_sets_the_calling_thread_only(two_threads):
    """What the library call is for: torch.set_flush_denormal leaves the pool's other thread computing denormals."""
    assert set_flush_denormal(True, every_thread=False) == 1
    assert 0.0 < denormal_fraction() < 1.0


def test_refuses_a_non_boolean():
    with pytest.raises(ValueError, match="on: got 1; allowed: True or False"):
        set_flush_denormal(1)
