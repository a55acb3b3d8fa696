"""Ahead-of-time compilation of every kernel for real GPUs.

The interpreter checks numbers, not whether a kernel compiles: here each kernel is compiled
with `triton.compile` for sm_90 and sm_80 at the signatures and block sizes the library
launches it with, in a subprocess without TRITON_INTERPRET (under the interpreter
`@triton.jit` yields an InterpretedFunction that cannot be compiled). No GPU is needed:
triton ships its own ptxas. The PTX shows whether the bandwidth-bound kernels issue
128-bit loads (`ld.global.v4`)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one subprocess compiles every kernel for two architectures: tens of seconds on 2 cores
pytestmark = pytest.mark.slow

_SCRIPT = textwrap.dedent(
    r'''
    import importlib.util, json, os, re, sys
    from concurrent.futures import ProcessPoolExecutor

    import fastmine_kernels as fk
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import importlib
    # (the package's attributes `interpolate` etc. are the functions; these are the modules)
    _impl = importlib.import_module("fastmine_kernels._impl")
    gp = importlib.import_module("fastmine_kernels.gradient_penalty")
    ip = importlib.import_module("fastmine_kernels.interpolate")
    ss = importlib.import_module("fastmine_kernels.supersample_select")

    D16 = [["tt.divisibility", 16]]  # what the JIT records for 16-aligned pointers and ints

    def spec(kernel, types, constexprs, num_warps, aligned=()):
        """types: the runtime arguments' types in order; aligned: names known % 16 == 0."""
        names = kernel.arg_names
        signature = {}
        for name in names:
            signature[name] = "constexpr" if name in constexprs else types.pop(0)
        assert not types, (kernel.__name__, types)
        attrs = {(names.index(n),): D16 for n in names if n not in constexprs and
                 (signature[n].startswith("*") or n in aligned)}
        return kernel, signature, constexprs, attrs, num_warps

    def configs():
        out = {}
        image = 3 * 64 * 64  # 12288: rows a multiple of 16 elements
        for name, row_len, dtype in [("image_fp32", image, "fp32"), ("image_bf16", image, "bf16"),
                                     ("odd_fp32", 3 * 33 * 37, "fp32"), ("vector_fp32", 2, "fp32")]:
            rows, block = _impl.row_tile(row_len)
            aligned = ("row_len",) if row_len % 16 == 0 else ()
            t = "*" + dtype
            for draw in (False, True):
                out[f"interpolate_fwd/{name}/draw={draw}"] = spec(
                    ip._interpolate_fwd_kernel, [t, t, t, "*fp32", "i32", "i32", "i32"],
                    dict(DRAW_EPS=draw, ROWS=rows, BLOCK=block), ip.NUM_WARPS, aligned)
            for want in ((True, True), (True, False), (False, True)):
                out[f"interpolate_bwd/{name}/want={want}"] = spec(
                    ip._interpolate_bwd_kernel, [t, "*fp32", t, t, "i32", "i32"],
                    dict(WANT_REAL=want[0], WANT_FAKE=want[1], ROWS=rows, BLOCK=block), ip.NUM_WARPS, aligned)
            n_chunks, chunk, srows, sblock = gp._sumsq_launch(row_len)
            out[f"row_sumsq/{name}"] = spec(
                gp._row_sumsq_kernel, [t, "*fp32", "i32", "i32", "i32"],
                dict(CHUNK=chunk, ROWS=srows, BLOCK=sblock), gp.NUM_WARPS, aligned)
            for one_sided in (False, True):
                out[f"penalty_bwd/{name}/one_sided={one_sided}"] = spec(
                    gp._penalty_bwd_kernel, [t, "*fp32", "*fp32", t, "i32", "i32", "fp32", "fp32"],
                    dict(ONE_SIDED=one_sided, ROWS=rows, BLOCK=block), gp.NUM_WARPS, aligned)
            out[f"gather/{name}"] = spec(
                ss._gather_kernel, [t, "i32", "i32", "*i64", t, "i32", "i32"],
                dict(ROWS=rows, BLOCK=block), ss.GATHER_WARPS, ("stride_k", "stride_n") + aligned)
        for one_sided in (False, True):
            out[f"penalty_finalize/one_sided={one_sided}"] = spec(
                gp._penalty_finalize_kernel, ["*fp32", "*fp32", "*fp32", "i32", "i32", "fp32", "fp32"],
                dict(ONE_SIDED=one_sided, BLOCK_R=gp._FINAL_BLOCK_R, BLOCK_C=gp._FINAL_BLOCK_C), gp.NUM_WARPS)
        for n_cols in (2, 8, 16, 64):
            block_n = max(2, _impl.next_pow2(n_cols))
            block_k = max(16, min(1024, ss._TILE // block_n))
            for permute in (False, True):
                for window in (False, True):
                    out[f"select/N={n_cols}/permute={permute}/window={window}"] = spec(
                        ss._select_kernel,
                        ["*fp32", "i32", "*i64", "*i64", "*i64", "*i64", "*fp32", "*i64", "*fp32",
                         "i32", "i32", "i32"],
                        # stride_n == 1 for contiguous scores: the JIT makes an int 1 a constexpr
                        dict(stride_n=1, PERMUTE=permute, HAS_WINDOW=window, BLOCK_K=block_k,
                             BLOCK_N=block_n, BLOCK_W=block_k), ss.SELECT_WARPS, ("stride_k",))
        return out

    def compile_one(job):
        name, arch = job
        kernel, signature, constexprs, attrs, num_warps = configs()[name]
        try:
            compiled = triton.compile(
                ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
        except Exception as err:  # reported, not raised: the test names every failure
            return name, arch, {"error": f"{type(err).__name__}: {err}"[:2000]}
        ptx = compiled.asm.get("ptx", "")
        return name, arch, {
            "ptx_chars": len(ptx),
            "cubin_bytes": len(compiled.asm.get("cubin", b"")),
            "ptx_target": (re.findall(r"^\.target\s+(\S+)", ptx, re.M) or [""])[0],
            "loads": sorted(set(re.findall(r"ld\.global[.\w]*", ptx))),
            "stores": sorted(set(re.findall(r"st\.global[.\w]*", ptx))),
        }

    if __name__ == "__main__":
        jobs = [(name, arch) for name in configs() for arch in (90, 80)]
        with ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            results = {}
            for name, arch, result in pool.map(compile_one, jobs):
                results.setdefault(name, {})[f"sm_{arch}"] = result
        print("JSON:" + json.dumps(results))
    '''
)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's notice; its default
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, ROOT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:")][-1]
    return json.loads(line[len("JSON:"):])


def test_every_kernel_compiles_for_sm90_and_sm80(compiled):
    kernels = {name.split("/")[0] for name in compiled}
    assert kernels == {
        "interpolate_fwd", "interpolate_bwd", "row_sumsq", "penalty_finalize", "penalty_bwd", "gather", "select"
    }
    failures = {
        f"{name} {arch}": result["error"]
        for name, per_arch in compiled.items()
        for arch, result in per_arch.items()
        if "error" in result
    }
    assert not failures, failures
    for name, per_arch in compiled.items():
        assert set(per_arch) == {"sm_90", "sm_80"}
        for arch, result in per_arch.items():
            assert result["ptx_chars"] > 0 and result["cubin_bytes"] > 0, (name, arch)
            assert result["ptx_target"].startswith(arch), (name, arch, result["ptx_target"])


@pytest.mark.parametrize(
    "name",
    [
        "interpolate_fwd/image_fp32/draw=False",
        "interpolate_fwd/image_fp32/draw=True",
        "interpolate_fwd/image_bf16/draw=False",
        "interpolate_bwd/image_fp32/want=(True, True)",
        "row_sumsq/image_fp32",
        "penalty_bwd/image_fp32/one_sided=False",
        "gather/image_fp32",
    ],
)
def test_bandwidth_bound_kernels_use_128_bit_accesses(compiled, name):
    # rows a multiple of 16 elements (the JIT then specialises row_len as 16-divisible):
    # every load and store of the image data is 128 bits wide
    for arch in ("sm_90", "sm_80"):
        result = compiled[name][arch]
        assert any(op.startswith("ld.global.v4") for op in result["loads"]), (name, arch, result["loads"])
        if not name.startswith("row_sumsq"):
            assert any(op.startswith("st.global.v4") for op in result["stores"]), (name, arch, result["stores"])


def test_unaligned_rows_still_compile_with_scalar_accesses(compiled):
    # 3663-element rows: no alignment is provable, Triton falls back to 32-bit accesses.
    # Recorded here so that a change in that behaviour is noticed.
    loads = compiled["interpolate_fwd/odd_fp32/draw=False"]["sm_90"]["loads"]
    assert loads and not any(op.startswith("ld.global.v4") for op in loads), loads
