"""The heap the distillation callback keeps while it trains (hf_onebit.training.heap): during training a large block
comes from the heap (not from a fresh mapping) and a freed one is reused without faulting its pages in again;
afterwards glibc maps large blocks afresh again and the heap's free memory goes back to the system."""

import ctypes
import resource

import pytest
import torch
from transformers import Trainer, TrainerCallback

from distill_utils import load_pair, tiny_teacher_dir, token_data, train_args
from hf_onebit.training import OneBitDistillationCallback, onebit_optimizer
from hf_onebit.training import heap as heap_module
from hf_onebit.training.heap import RetainedHeap

BLOCK = 64 << 20  # above glibc's largest mmap threshold (32 MB)
PAGES = BLOCK // 4096

LIBC = heap_module._glibc()
glibc = pytest.mark.skipif(LIBC is None or not hasattr(LIBC, "mallinfo2"),
                           reason="the C library is not glibc >= 2.33 (nothing to switch, or no mallinfo2)")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mapped_afresh() -> bool:
    """Whether glibc serves a large block from a fresh mapping (its mmapped bytes grow by the block). The block is
    larger than all the free memory the heap holds: a hole freed inside the heap (by this probe or by whatever ran
    before) would serve any request that fits, whatever glibc's settings."""
    LIBC.mallinfo2.restype = _MallInfo2
    info = LIBC.mallinfo2()
    size = max(2 * BLOCK, info.fordblks + BLOCK)  # never touched: address space only
    before = info.hblkhd
    block = torch.empty(size // 4)  # allocated, not touched: no memory is used
    grew = LIBC.mallinfo2().hblkhd - before >= size
    del block
    return grew


def _refaults(size: int = BLOCK) -> int:
    """Page faults of allocating, touching and freeing a block of ``size`` bytes right after the same was freed."""
    torch.empty(size // 4).fill_(1.0)  # allocated, touched, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(size // 4).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


@glibc
def test_a_freed_block_is_reused_without_faulting_its_pages_in_again():
    assert _mapped_afresh()  # glibc's defaults
    with RetainedHeap() as heap:
        assert heap.active
        assert not _mapped_afresh()
        _refaults()  # the first block under the new settings may grow the heap
        assert _refaults() < PAGES // 20
        _refaults(4 * BLOCK)  # 256 MB now free inside the heap, still resident
        held = _rss()
    assert not heap.active
    assert _mapped_afresh()  # released: the defaults again
    assert _rss() < held - 2 * BLOCK  # and the free memory went back to the system
    heap.release()  # idempotent


def test_elsewhere_than_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(heap_module, "_glibc", lambda: None)
    heap = RetainedHeap()
    assert not heap.active
    heap.release()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return tiny_teacher_dir(tmp_path_factory.mktemp("teacher"))


@glibc
@pytest.mark.parametrize("keep", [True, False])
def test_the_callback_keeps_the_heap_during_training_only(teacher_dir, tmp_path, keep):
    student, teacher = load_pair(teacher_dir)
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(_mapped_afresh())

    cb = OneBitDistillationCallback(teacher, recipe="progressive", init_steps=1, plot=False, keep_heap=keep)
    Trainer(model=student, args=train_args(str(tmp_path), 3), train_dataset=token_data(),
            callbacks=[cb, Probe()], optimizers=(onebit_optimizer(student), None)).train()
    assert seen == [not keep] * 3
    assert _mapped_afresh()
    with pytest.raises(ValueError, match="keep_heap: got 1"):
        OneBitDistillationCallback(teacher, keep_heap=1)
