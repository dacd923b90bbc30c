"""The two weight formats stay the same objects through copy, deepcopy and pickle (``is_ternary`` is identity)."""

import copy
import pickle

import pytest

from hf_onebit.formats import FORMATS


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_copied_or_unpickled_format_is_the_format_itself(name):
    fmt = FORMATS[name]
    for other in (copy.copy(fmt), copy.deepcopy(fmt), pickle.loads(pickle.dumps(fmt)),
                  copy.deepcopy({"nested": [fmt]})["nested"][0]):
        assert other is fmt
        assert other.is_ternary == (name == "ternary")
