import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_onebit.formats.packing import (
    FORMAT_VERSION,
    bits_per_weight,
    check_format_version,
    check_packed_shape,
    pack_signs,
    pack_ternary,
    packed_columns,
    unpack_bits,
    unpack_signs,
    unpack_ternary,
    unpack_ternary_codes,
)


@settings(max_examples=60, deadline=None)
@given(out=st.integers(1, 40), inp=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_pack_unpack_roundtrip(out, inp, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    packed = pack_signs(w)
    assert packed.dtype == torch.uint8 and packed.shape == (out, packed_columns(inp))
    expected = torch.where(w >= 0, 1.0, -1.0)
    assert torch.equal(unpack_signs(packed, inp), expected)
    # padding bits past in_features are zero
    pad = packed_columns(inp) * 8 - inp
    if pad:
        assert int((packed[:, -1] >> (8 - pad)).max()) == 0


def test_layout_is_lsb_first_along_inputs():
    # inputs 0 and 9 positive, the rest negative -> byte0 = 0b00000001, byte1 = 0b00000010
    w = -torch.ones(1, 12)
    w[0, 0] = 1
    w[0, 9] = 1
    assert pack_signs(w).tolist() == [[1, 2]]
    # int32 view of 4 bytes = 32 consecutive inputs with input i in bit i (the property GPU kernels rely on)
    w = -torch.ones(1, 32)
    w[0, 31] = 1
    word = pack_signs(w).view(torch.int32).item()
    assert word == -(2**31)


@pytest.mark.parametrize("rows", [0, 1, 5])
@pytest.mark.parametrize("inp", [1, 7, 8, 9, 577])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int8])
def test_unpacking_gives_contiguous_values_in_any_dtype_and_any_row_count(rows, inp, dtype):
    g = torch.Generator().manual_seed(rows * 1000 + inp)
    w = torch.randn(rows, inp, generator=g)
    signs = unpack_signs(pack_signs(w), inp, dtype)
    assert signs.dtype == dtype and signs.shape == (rows, inp) and signs.is_contiguous()
    assert torch.equal(signs, torch.where(w >= 0, 1.0, -1.0).to(dtype))
    assert torch.equal(unpack_bits(pack_signs(w), inp), w >= 0)
    values = torch.randint(-1, 2, (rows, inp), generator=g)
    ternary = unpack_ternary(pack_ternary(values), inp, dtype)
    assert ternary.dtype == dtype and ternary.shape == (rows, inp) and ternary.is_contiguous()
    assert torch.equal(ternary, values.to(dtype))
    assert torch.equal(unpack_ternary_codes(pack_ternary(values), inp), (values + 1).to(torch.uint8))


def test_zero_is_plus_one_and_unpack_bits():
    w = torch.tensor([[0.0, -0.0, -1.0, 2.0]])
    assert unpack_bits(pack_signs(w), 4).tolist() == [[True, True, False, True]]


def test_shape_and_version_errors_name_the_field():
    with pytest.raises(ValueError, match="2-D"):
        pack_signs(torch.randn(3))
    with pytest.raises(ValueError, match="layer.weight.*shape"):
        check_packed_shape(torch.zeros(4, 3, dtype=torch.uint8), 4, 30, name="layer.weight")
    with pytest.raises(ValueError, match="uint8"):
        check_packed_shape(torch.zeros(4, 4), 4, 30)
    assert check_format_version(str(FORMAT_VERSION)) == FORMAT_VERSION
    with pytest.raises(ValueError, match="format_version: 99"):
        check_format_version(99)


def test_bits_per_weight_4096():
    # 1 bit per weight + two 16-bit vectors: 1 + 16 * 8192 / 4096^2 = 1.0078
    assert bits_per_weight(4096, 4096) == pytest.approx(1.0078125)
    assert bits_per_weight(4096, 4096, scale_bits=32) == pytest.approx(1.015625)
    # row padding counts: 9 inputs need 2 bytes per row
    assert bits_per_weight(9, 1, scale_bits=0) == pytest.approx(16 / 9)
