"""The CPU kernels (hf_onebit/ops/cpu) against the reference path, per ISA variant, under torch.compile and opcheck,
and the build/fallback machinery (cache directory, file lock, no compiler)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpu_kernel_cases as cases
from cpu_kernel_cases import DTYPES, isa, kernel_library, make_x, threads  # noqa: F401  (kernel_library: autouse)
from hf_onebit.ops import binary_linear, select_kernel
from hf_onebit.ops import cpu


def make_layer(K: int, N: int, bias: bool, seed: int, scale_dtype=torch.float16):
    return cases.make_layer(K, N, bias, seed, scale_dtype, "binary")


def check_against_reference(x, layer, K, act_bits):
    """Also asserts that the CPU kernel is the one selected for ``x``."""
    return cases.check_against_reference(x, layer, K, act_bits, "binary")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    K=st.one_of(st.integers(1, 300), st.integers(500, 1300)),  # whole 512-input blocks (bit planes) and tails
    N=st.integers(1, 300),
    M=st.one_of(st.integers(1, 9), st.integers(10, 600)),
    dtype=st.sampled_from(DTYPES),
    bias=st.booleans(),
    act_bits=st.sampled_from((0, 8)),
    layout=st.sampled_from(("contiguous", "transposed", "sliced", "3d")),
    nthreads=st.sampled_from((1, 2)),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(K, N, M, dtype, bias, act_bits, layout, nthreads, seed):
    layer = make_layer(K, N, bias, seed)
    x = make_x(M, K, dtype, layout, seed + 1)
    with threads(nthreads):
        check_against_reference(x, layer, K, act_bits)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 5, 64])
def test_large_k_and_scale_dtypes(dtype, M):
    # Sizes of a real layer's K (several row kernels' word/tail paths at once) with bf16 / fp32 scale vectors.
    K, N = 1000, 70
    for scale_dtype in (torch.bfloat16, torch.float32):
        layer = make_layer(K, N, True, 3, scale_dtype)
        x = torch.randn(M, K).to(dtype)
        for act_bits in (0, 8):
            check_against_reference(x, layer, K, act_bits)


def isa_params():
    return [pytest.param(name, id=name) for name in cpu.ISA_NAMES]


@pytest.mark.parametrize("name", isa_params())
@pytest.mark.parametrize("K, N", [(333, 150), (1100, 37)])
def test_each_isa_variant(name, K, N):
    """Every compiled ISA variant (forced) agrees with the reference and, on the int8 path, bit for bit with the
    portable variant: the int8 grid is computed exactly and the integer dot products are exact. K = 1100 gives rows of
    whole 512-input blocks, whole words and a partial word; N = 37 leaves weight rows over after groups of 4 and 2."""
    if name not in cpu.supported_isas():
        pytest.skip(f"ISA variant {name!r} not supported here (CPU/compiler offers {cpu.supported_isas()})")
    layer = make_layer(K, N, True, 11)
    # row kernels for every mr (int8 bit planes up to 4 rows); AMX (from 16-24 rows) with partial tiles
    for M in (1, 2, 3, 4, 5, 8, 9, 17, 40, 100):
        for dtype in DTYPES:
            x = torch.randn(M, K).to(dtype)
            with isa(name):
                assert cpu.active_isa_name() == name
                for act_bits in (0, 8):
                    got = check_against_reference(x, layer, K, act_bits)
                    if act_bits == 8:
                        with isa("portable"):
                            portable = binary_linear(x, *layer, K, 8, backend="cpu")
                        torch.testing.assert_close(got, portable, rtol=0, atol=0)


def test_isa_environment_override(monkeypatch):
    monkeypatch.setenv(cpu.ISA_ENV, "portable")
    assert cpu.active_isa_name() == "portable"
    monkeypatch.setenv(cpu.ISA_ENV, "sse9")
    with pytest.raises(ValueError, match="HF_ONEBIT_CPU_ISA"):
        cpu.active_isa_name()
    with pytest.raises(ValueError, match="set_isa"):
        cpu.set_isa("sse9")


def test_int8_error_vs_exact_path():
    """The documented cost of act_bits=8 (docs/kernels-cpu.md): the int8 grid's step is absmax/127 per token, so on
    Gaussian activations the output's relative error is about absmax / rms / (127 * sqrt(12)): ~0.8% with g = 1 and
    ~1.1% with g spread over [0.5, 1.5]."""
    K, N, M = 2048, 512, 16
    weight, scale_in, scale_out, _ = make_layer(K, N, False, 5)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(6))
    for g, limit in ((torch.ones(K), 1e-2), (scale_in, 1.5e-2)):
        exact = binary_linear(x, weight, g, scale_out, None, K, 0, backend="reference")
        int8 = binary_linear(x, weight, g, scale_out, None, K, 8, backend="cpu")
        rel = ((int8 - exact).norm() / exact.norm()).item()
        assert 0.002 < rel < limit, rel


def test_all_zero_rows_and_empty_batch():
    cases.check_zero_rows_and_empty_batch("binary")


def test_exact_prefill_without_avx512_takes_torch_gemm(monkeypatch):
    cases.check_dense_prefill("binary", monkeypatch)


def test_bad_shapes_name_the_argument():
    K, N = 16, 8
    weight, scale_in, scale_out, bias = make_layer(K, N, True, 0)
    x = torch.randn(2, K)
    with pytest.raises(ValueError, match="scale_in"):
        cpu.cpu_binary_linear(x, weight, scale_in[:-1], scale_out, bias, K, 0)
    with pytest.raises(ValueError, match="weight"):
        cpu.cpu_binary_linear(x, weight[:, :1], scale_in, scale_out, bias, K, 0)
    with pytest.raises(ValueError, match="in_features"):
        cpu.cpu_binary_linear(x, weight, scale_in, scale_out, bias, K + 1, 0)


def test_scale_cache_follows_in_place_updates():
    K, N = 32, 16
    weight, scale_in, scale_out, _ = make_layer(K, N, False, 4)
    x = torch.randn(2, K)
    first = binary_linear(x, weight, scale_in, scale_out, None, K, backend="cpu")
    with torch.no_grad():
        scale_out.mul_(2)
    second = binary_linear(x, weight, scale_in, scale_out, None, K, backend="cpu")
    torch.testing.assert_close(second, first * 2, rtol=1e-3, atol=1e-5)


def test_call_plan_is_reused_and_follows_every_change():
    """The eager path caches a call plan on the weight (ops/cpu/plan.py): reused while nothing changes, rebuilt when
    the weight, a scale or the bias changes in place or is replaced, and calls it does not cover take the general
    path; every result equals the reference."""
    from hf_onebit.ops.cpu.plan import cached_plan, plan_of

    K, N = 600, 24
    weight, scale_in, scale_out, bias = make_layer(K, N, True, 5)
    x = torch.randn(3, K).bfloat16()

    def call(x=x, scale_in=scale_in, scale_out=scale_out, bias=bias):
        return check_against_reference(x, (weight, scale_in, scale_out, bias), K, 8)

    call()
    plan = plan_of(weight)
    call()
    assert plan_of(weight) is plan  # reused
    with torch.no_grad():
        weight.copy_(torch.roll(weight, 1, 0))  # new bits in the same memory
        first = call()
        scale_out.mul_(2)  # each call below is checked against the reference on the changed tensors
        second = call()
        bias.add_(1.0)
        third = call()
    assert not torch.equal(first, second) and not torch.equal(second, third)
    assert plan_of(weight) is not plan
    call(scale_in=scale_in.clone().mul_(0.5))  # another tensor object: another plan
    assert cached_plan(weight, plan_of(weight).key) is plan_of(weight)
    call()
    plan = plan_of(weight)
    y3 = call(x=torch.randn(2, 1, K).bfloat16())  # a model's (batch, tokens, K): the same plan, output (2, 1, N)
    assert y3.shape == (2, 1, N) and plan_of(weight) is plan
    call(x=torch.randn(3, K).half())  # not covered by plans: the general path
    call(x=torch.randn(K, 3).bfloat16().T)  # non-contiguous: the general path
    with pytest.raises(ValueError, match="in_features"):
        binary_linear(torch.randn(3, K + 1).bfloat16(), weight, scale_in, scale_out, bias, K, 8, backend="cpu")


def test_module_with_a_call_plan_saves_and_copies(tmp_path):
    """torch.save of a whole module or of its state_dict (read back by torch.load's default weights_only=True) and
    copy.deepcopy still work after eager calls made a plan for the weight; the copies rebuild their own plan and
    compute the same."""
    import copy

    from hf_onebit.ops.cpu.plan import plan_of

    module = make_module(K=600, N=24, act_bits=8)
    x = torch.randn(2, 600)
    with torch.no_grad():
        expected = module(x)
    assert plan_of(module.weight) is not None
    leaked = {name: list(vars(t)) for name, t in module.named_parameters()}
    assert not any(leaked.values()), leaked  # plans, scale conversions, page advice: beside the tensors, not on them
    torch.save(module, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    copied = copy.deepcopy(module)
    torch.save(module.state_dict(), tmp_path / "sd.pt")
    from_state = make_module(K=600, N=24, act_bits=8)
    from_state.load_state_dict(torch.load(tmp_path / "sd.pt"))  # weights_only=True: nothing but tensors in the file
    with torch.no_grad():
        for other in (loaded, copied, from_state):
            torch.testing.assert_close(other(x), expected, rtol=0, atol=0)
            assert plan_of(other.weight).w_ptr == other.weight.data_ptr()


def make_module(K=72, N=40, act_bits=0):
    from hf_onebit import OneBitConfig, OneBitLinear

    torch.manual_seed(0)
    return OneBitLinear.from_linear(torch.nn.Linear(K, N), OneBitConfig(act_bits=act_bits)).eval()


@pytest.mark.parametrize("act_bits", [0, 8])
def test_torch_compile_uses_kernel(act_bits):
    module = make_module(act_bits=act_bits)
    x = torch.randn(3, 5, 72)
    assert select_kernel(x, module.weight, act_bits).name == "cpu"
    eager = module(x)
    compiled = torch.compile(module, fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager)
        torch.testing.assert_close(compiled(x * 2), module(x * 2))


def test_opcheck_with_cpu_kernel():
    K, N = 37, 19
    weight, scale_in, scale_out, bias = make_layer(K, N, True, 9)
    samples = [
        (torch.randn(4, K), weight, scale_in, scale_out, bias, K, 0),
        (torch.randn(2, 3, K), weight, scale_in, scale_out, None, K, 8),
        (torch.randn(5, K, requires_grad=True), weight, scale_in.float().requires_grad_(), scale_out, bias, K, 0),
    ]
    for args in samples:
        assert select_kernel(args[0], weight, args[6]).name == "cpu"
        torch.library.opcheck(torch.ops.hf_onebit.binary_linear.default, args)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork does not exist on this platform")
def test_kernel_works_in_forked_child():
    # The worker threads of the kernel's pool do not survive fork(); the child must start its own, not wait forever.
    K, N = 4096, 512  # enough work for two threads
    layer = make_layer(K, N, False, 8)
    x = torch.randn(2, K)
    with threads(2):
        expected = binary_linear(x, *layer, K, 8, backend="cpu")  # starts the parent's pool
        pid = os.fork()
        if pid == 0:  # child: exit code says whether the kernel ran and agreed
            signal.alarm(60)  # a hang kills the child (and fails the test) instead of hanging the suite
            try:
                ok = torch.equal(binary_linear(x, *layer, K, 8, backend="cpu"), expected)
            finally:
                os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# ---------------------------------------------------------------- build machinery (fresh subprocesses)

SCRIPT = textwrap.dedent(
    """
    import json, warnings, torch
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        from hf_onebit.ops import binary_linear, select_kernel, cpu
        from hf_onebit.formats.packing import pack_signs
        w = pack_signs(torch.randn(12, 20)); g = torch.rand(20); h = torch.rand(12); x = torch.randn(3, 20)
        y1 = binary_linear(x, w, g, h, None, 20)
        y2 = binary_linear(x, w, g, h, None, 20, act_bits=8)
        ref = binary_linear(x, w, g, h, None, 20, backend="reference")
        kernel = select_kernel(x, w, 0)
    from hf_onebit.ops.cpu.build import library_path
    print(json.dumps({
        "warnings": [str(w.message) for w in caught if "hf_onebit" in str(w.message)],
        "kernel": kernel.name if kernel else None,
        "close": bool(torch.allclose(y1, ref, atol=1e-5)),
        "library": str(library_path()),
        "exists": library_path().exists(),
    }))
    """
)


def run_script(env_updates: dict) -> dict:
    env = {**os.environ, **env_updates}
    env.pop(cpu.ISA_ENV, None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_compiler_falls_back_with_one_warning(tmp_path):
    result = run_script({"CC": str(tmp_path / "no-such-cc"), "HF_ONEBIT_CACHE": str(tmp_path / "cache")})
    assert result["kernel"] is None  # reference path
    assert result["close"]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "no-such-cc" in result["warnings"][0] and "reference path" in result["warnings"][0]
    assert not result["exists"]


def test_pthread_pool_variant(tmp_path):
    # The library built without OpenMP (what a compiler without it gets) runs on its own pthread pool.
    code = textwrap.dedent(
        """
        import torch
        torch.set_num_threads(2)
        from hf_onebit.ops import binary_linear, select_kernel
        from hf_onebit.formats.packing import pack_signs
        w = pack_signs(torch.randn(600, 4096)); g = torch.rand(4096); h = torch.rand(600); x = torch.randn(3, 4096)
        assert select_kernel(x, w, 0).name == "cpu"
        for act_bits in (0, 8):
            for _ in range(50):  # many fork-joins through the pool
                y = binary_linear(x, w, g, h, None, 4096, act_bits)
            ref = binary_linear(x, w, g, h, None, 4096, act_bits, backend="reference")
            assert torch.allclose(y, ref, rtol=1e-4, atol=1e-3), (y - ref).abs().max()
        print("ok")
        """
    )
    env = {**os.environ, "HF_ONEBIT_CACHE": str(tmp_path), "HF_ONEBIT_CPU_OPENMP": "0"}
    env.pop(cpu.ISA_ENV, None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr
    (lib,) = tmp_path.glob("cpu-*/*.so")
    if shutil.which("ldd"):
        assert "gomp" not in subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout


def _aged_build(folder, days):
    """A fake cached build folder whose files are ``days`` old."""
    import time

    folder.mkdir(parents=True)
    lib = folder / "libhf_onebit_cpu.so"
    lib.write_bytes(b"old")
    old = time.time() - days * 86400
    os.utime(lib, (old, old))
    return folder


def test_prune_removes_only_stale_other_builds(tmp_path):
    from hf_onebit.ops.cpu.build import prune_stale_builds

    stale = _aged_build(tmp_path / "cpu-aaaa", 60)
    recent = _aged_build(tmp_path / "cpu-bbbb", 2)
    current = _aged_build(tmp_path / "cpu-cccc", 90)  # the one in use is never removed, however old
    other = _aged_build(tmp_path / "selfgen", 90)  # not a build folder
    assert prune_stale_builds(keep=current, max_age_days=30) == [stale]
    assert not stale.exists() and recent.exists() and current.exists() and other.exists()


def test_build_cache_dir_and_concurrent_builds(tmp_path):
    cache = tmp_path / "cache"
    stale = _aged_build(cache / "cpu-0000000000000000", 365)  # an old version's build: removed by the new build
    env = {**os.environ, "HF_ONEBIT_CACHE": str(cache)}
    env.pop("CC", None)
    env.pop(cpu.ISA_ENV, None)
    procs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for result in results:
        assert result["kernel"] == "cpu" and result["close"] and not result["warnings"]
        assert result["library"].startswith(str(cache)) and result["exists"]
    assert results[0]["library"] == results[1]["library"]
    built = list(cache.glob("cpu-*/*.so"))
    assert len(built) == 1, built  # one library, no half-written leftovers, the stale build gone
    assert not list(cache.glob("cpu-*/build-*")) and not stale.exists()


def test_int8_sums_at_their_bound_do_not_overflow():
    cases.check_int8_extremes("binary", cpu.ISA_NAMES)
