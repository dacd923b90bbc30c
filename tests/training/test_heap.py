"""The heap the distillation callback keeps while it trains (hf_onebit.training.heap): a freed large block is reused
without faulting its pages in again, only during training; afterwards the free memory goes back to the system and
glibc maps large blocks afresh again."""

import resource

import pytest
from transformers import Trainer, TrainerCallback

from distill_utils import load_pair, tiny_teacher_dir, token_data, train_args
from hf_onebit.training import OneBitDistillationCallback, onebit_optimizer
from hf_onebit.training import heap as heap_module
from hf_onebit.training.heap import RetainedHeap

BLOCK = 64 << 20  # above glibc's largest mmap threshold (32 MB): served by mmap under the defaults
PAGES = BLOCK // 4096

glibc = pytest.mark.skipif(heap_module._glibc() is None, reason="the C library is not glibc (nothing to switch)")


def _refaults(size: int = BLOCK) -> int:
    """Page faults of allocating, touching and freeing a block of ``size`` bytes right after the same was freed."""
    import torch

    torch.empty(size // 4).fill_(1.0)  # allocated, touched, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(size // 4).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


@glibc
def test_a_freed_block_is_reused_without_faulting_its_pages_in_again():
    assert _refaults() > PAGES // 2  # glibc's defaults: a fresh mapping every time
    with RetainedHeap() as heap:
        assert heap.active
        _refaults()  # the first block under the new settings grows the heap
        assert _refaults() < PAGES // 20
        _refaults(4 * BLOCK)  # 256 MB now free inside the heap, still resident
        held = _rss()
    assert not heap.active
    assert _rss() < held - 2 * BLOCK  # released: the free memory went back to the system
    assert _refaults(8 * BLOCK) > 4 * PAGES  # and a block larger than any free one is mapped afresh again
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
            _refaults()
            seen.append(_refaults() < PAGES // 20)

    cb = OneBitDistillationCallback(teacher, recipe="progressive", init_steps=1, plot=False, keep_heap=keep)
    Trainer(model=student, args=train_args(str(tmp_path), 3), train_dataset=token_data(),
            callbacks=[cb, Probe()], optimizers=(onebit_optimizer(student), None)).train()
    assert seen == [keep] * 3
    assert _refaults(8 * BLOCK) > 4 * PAGES  # (a block larger than any the run freed in the heap)
    with pytest.raises(ValueError, match="keep_heap: got 1"):
        OneBitDistillationCallback(teacher, keep_heap=1)
