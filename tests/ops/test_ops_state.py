"""The backends' per-tensor runtime state (hf_onebit.ops.state): beside the tensor, never on it, freed with it."""

import copy
import gc
import weakref

import torch

from hf_onebit.ops import state


def test_slots_are_kept_per_tensor_and_per_name():
    a, b = torch.zeros(3), torch.zeros(3)
    assert state.get(a, "x.one") is None and state.get(a, "x.one", 7) == 7
    assert state.put(a, "x.one", 1) and state.put(a, "x.two", 2) and state.put(b, "x.one", 3)
    assert (state.get(a, "x.one"), state.get(a, "x.two"), state.get(b, "x.one")) == (1, 2, 3)
    state.drop(a, "x.one")
    assert state.get(a, "x.one") is None and state.get(a, "x.two") == 2
    state.clear("x.one")
    assert state.get(b, "x.one") is None
    state.drop(b)
    state.drop(torch.zeros(1))  # nothing kept: nothing to do


def test_nothing_travels_with_the_tensor(tmp_path):
    t = torch.nn.Parameter(torch.ones(4))
    state.put(t, "x.plan", {"anything": object()})
    assert vars(t) == {}  # no attribute
    torch.save({"t": t.detach()}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt")["t"], t.detach())  # weights_only=True reads it back
    assert state.get(copy.deepcopy(t), "x.plan") is None


def test_an_entry_goes_with_its_tensor_and_never_keeps_it_alive():
    t = torch.zeros(5)
    payload = torch.ones(2)
    state.put(t, "x.copy", payload)
    tid, t_ref, payload_ref = id(t), weakref.ref(t), weakref.ref(payload)
    before = state.tracked("x.copy")
    del t, payload
    gc.collect()
    assert t_ref() is None and payload_ref() is None
    assert tid not in state._entries and state.tracked("x.copy") == before - 1
    # a new tensor that happens to get the same id starts empty
    fresh = [torch.zeros(5) for _ in range(64)]
    assert all(state.get(f, "x.copy") is None for f in fresh)
