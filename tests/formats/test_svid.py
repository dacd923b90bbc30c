import pytest
import torch

from hf_onebit.formats.init import svid_rank1


def best_rank1_error(A):
    u, s, vh = torch.linalg.svd(A, full_matrices=False)
    return (A - s[0] * torch.outer(u[:, 0], vh[0])).norm()


@pytest.mark.parametrize("method", ["svid", "nmf"])
@pytest.mark.parametrize("shape", [(64, 64), (37, 101), (200, 50), (1, 9)])
def test_rank1_matches_best_fit_of_abs(method, shape):
    torch.manual_seed(sum(shape))
    W = torch.randn(*shape) * torch.rand(shape[0], 1) * torch.rand(1, shape[1])  # rows/cols of different scale
    A = W.abs()
    a, b = svid_rank1(W, method=method, iters=200 if method == "nmf" else 50)
    assert a.shape == (shape[0],) and b.shape == (shape[1],)
    assert (a >= 0).all() and (b >= 0).all()
    err = (A - torch.outer(a, b)).norm()
    assert err <= best_rank1_error(A) * (1 + 1e-3) + 1e-6


def test_svid_reduces_error_vs_plain_sign_mean():
    torch.manual_seed(0)
    W = torch.randn(128, 96) * torch.linspace(0.1, 2.0, 96)
    a, b = svid_rank1(W)
    svid = torch.sign(W) * torch.outer(a, b)
    absmean = torch.sign(W) * W.abs().mean()
    assert (W - svid).norm() < (W - absmean).norm()


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        svid_rank1(torch.randn(4, 4), method="qr")
    with pytest.raises(ValueError, match="2-D"):
        svid_rank1(torch.randn(4))
