"""Benchmark fastmine's Triton kernels against their eager PyTorch compositions on a GPU.

    python benchmarks/bench_kernels.py [--out PATH] [--only gp,critic,select] [--quick]

Needs a CUDA device: on a machine without one it prints a message and exits 0 (the
interpreter says nothing about speed). TRITON_INTERPRET is removed from the environment
before triton is imported. Timings are medians of `triton.testing.do_bench`; the ceiling
is the device's copy bandwidth, measured with a large `dst.copy_(src)` (bytes read +
bytes written). Every configuration also records the largest difference between the two
implementations, and a configuration that fails is reported and skipped, not fatal.

Configurations:
- gp: the gradient-penalty elementwise path: interpolate (ε drawn in the kernel vs
  torch.rand + eager arithmetic) + penalty forward + penalty backward w.r.t. g, with g a
  stand-in tensor of the image's shape. Bytes moved: interpolate reads 2·N·D and writes
  N·D, the penalty forward reads N·D, its backward reads N·D and writes N·D: 6·N·D elements.
- critic: a whole DCGAN-64 critic step with gradient penalty (double backward by autograd).
- select: supersample selection, K seeds × N generators, gathering 3×64×64 fp32 images,
  window of 1000 calls. Bytes moved: K·N scores + 2·K·D gathered image elements (the
  window's W·N floats and the K-sized index arrays are listed too).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compiled kernels only

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fastmine_benchmarks.common import RESULTS_DIR, device_info, write_result  # noqa: E402

DEVICE = "cuda"  # a module global only so that the benchmark code itself can be smoke-tested on a CPU


def _median_ms(fn, quick):
    import triton.testing  # optional: triton ships with CUDA builds of torch (main() checks it is there)

    return triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=30 if quick else 100, return_mode="median")


def copy_bandwidth_gbps(quick) -> float:
    n = (1 << 26) if quick else (1 << 28)  # 256 MiB or 1 GiB of fp32
    src = torch.empty(n, dtype=torch.float32, device=DEVICE).uniform_()
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), quick)
    return 2 * n * 4 / ms / 1e6


# --- gradient-penalty elementwise path ------------------------------------------------------
def bench_gp(fk, shape, quick, copy_gbps):
    n = shape[0]
    real = torch.randn(shape, device=DEVICE)
    fake = torch.randn(shape, device=DEVICE)
    grad_stand_in = torch.randn(shape, device=DEVICE) * (1.5 / (shape[1] * shape[2] * shape[3]) ** 0.5)
    grad_stand_in.requires_grad_(True)

    def triton_path():
        x_hat, _ = fk.interpolate(real, fake, seed=1234, impl="triton")
        penalty = fk.gradient_penalty_from_grad(grad_stand_in, 10.0, impl="triton")
        (dgrad,) = torch.autograd.grad(penalty, grad_stand_in)
        return x_hat, penalty, dgrad

    def eager_path():
        eps = torch.rand(n, device=DEVICE)
        x_hat, _ = fk.interpolate_reference(real, fake, eps=eps)
        penalty = fk.gradient_penalty_from_grad_reference(grad_stand_in, 10.0)
        (dgrad,) = torch.autograd.grad(penalty, grad_stand_in)
        return x_hat, penalty, dgrad

    # agreement (ε given to both so that x̂ is comparable)
    eps = torch.rand(n, device=DEVICE)
    x_t, _ = fk.interpolate(real, fake, eps=eps, impl="triton")
    x_e, _ = fk.interpolate_reference(real, fake, eps=eps)
    _, p_t, d_t = triton_path()
    _, p_e, d_e = eager_path()
    max_diff = {
        "x_hat": (x_t - x_e).abs().max().item(),
        "penalty_rel": abs(p_t.item() - p_e.item()) / max(abs(p_e.item()), 1e-12),
        "dgrad": (d_t - d_e).abs().max().item(),
    }
    elements = real.numel()
    bytes_moved = 6 * elements * real.element_size()
    t_ms = _median_ms(triton_path, quick)
    e_ms = _median_ms(eager_path, quick)
    return {
        "bytes_moved": bytes_moved,
        "bytes_formula": "6*N*D*4 (interp r2 w1, penalty fwd r1, bwd r1 w1)",
        "triton_ms": t_ms,
        "eager_ms": e_ms,
        "speedup": e_ms / t_ms,
        "triton_GBps": bytes_moved / t_ms / 1e6,
        "eager_GBps": bytes_moved / e_ms / 1e6,
        "triton_pct_of_copy": 100 * bytes_moved / t_ms / 1e6 / copy_gbps,
        "max_diff": max_diff,
    }


# --- a whole DCGAN-64 critic step -------------------------------------------------------------
def dcgan64_critic():
    layers, channels = [], 3
    for width in (64, 128, 256, 512):  # 64 -> 32 -> 16 -> 8 -> 4, no normalisation (GP)
        layers += [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
    layers += [nn.Conv2d(512, 1, 4, 1, 0), nn.Flatten()]
    return nn.Sequential(*layers)


def bench_critic(fk, batch, quick, copy_gbps):
    torch.manual_seed(0)
    critic = dcgan64_critic().to(DEVICE)
    real = torch.randn(batch, 3, 64, 64, device=DEVICE)
    fake = torch.randn(batch, 3, 64, 64, device=DEVICE)
    eps = torch.rand(batch, device=DEVICE)

    def step(impl, fixed_eps=None):
        critic.zero_grad(set_to_none=True)
        if impl == "triton":
            x_hat, _ = fk.interpolate(real, fake, eps=fixed_eps, seed=1234, impl="triton")
        else:
            x_hat, _ = fk.interpolate_reference(
                real, fake, eps=fixed_eps if fixed_eps is not None else torch.rand(batch, device=DEVICE)
            )
        x_hat.requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
        penalty = fk.gradient_penalty_from_grad(grad, 10.0, impl=impl)
        loss = critic(fake).mean() - critic(real).mean() + penalty
        loss.backward()
        return loss

    step("triton", eps)
    g_t = [p.grad.clone() for p in critic.parameters()]
    step("torch", eps)
    g_e = [p.grad.clone() for p in critic.parameters()]
    rel = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(g_t, g_e))
    t_ms = _median_ms(lambda: step("triton"), quick)
    e_ms = _median_ms(lambda: step("torch"), quick)
    return {"triton_ms": t_ms, "eager_ms": e_ms, "speedup": e_ms / t_ms, "max_param_grad_rel_diff": rel}


# --- supersample selection ---------------------------------------------------------------------
def bench_select(fk, k, n, quick, copy_gbps, window_len=1000):
    d = 3 * 64 * 64
    scores = torch.randn(k, n, device=DEVICE)
    candidates = torch.empty(k, n, 3, 64, 64, device=DEVICE).normal_()
    windows = {impl: torch.zeros(window_len, n, device=DEVICE) for impl in ("triton", "torch")}
    positions = {impl: torch.zeros(1, dtype=torch.int64, device=DEVICE) for impl in ("triton", "torch")}
    gen = torch.Generator(device=DEVICE)

    def run(impl, perm=None):
        return fk.supersample_select(
            scores, "permute", window=windows[impl], window_pos=positions[impl], perm=perm,
            generator=gen, candidates=candidates, impl=impl,
        )

    perm = torch.randperm(k, device=DEVICE)
    a, b = run("triton", perm), run("torch", perm)
    agree = all(torch.equal(x, y) for x, y in zip(a, b) if x is not None and y is not None)
    bytes_moved = k * n * 4 + 2 * k * d * 4
    t_ms = _median_ms(lambda: run("triton"), quick)
    e_ms = _median_ms(lambda: run("torch"), quick)
    return {
        "bytes_moved": bytes_moved,
        "bytes_formula": f"K*N*4 + 2*K*D*4 (D={d}); plus window {window_len}*N*4 and ~4*K*8 index bytes",
        "triton_ms": t_ms,
        "eager_ms": e_ms,
        "speedup": e_ms / t_ms,
        "triton_GBps": bytes_moved / t_ms / 1e6,
        "eager_GBps": bytes_moved / e_ms / 1e6,
        "triton_pct_of_copy": 100 * bytes_moved / t_ms / 1e6 / copy_gbps,
        "outputs_equal": agree,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/kernels_<device>.json)")
    parser.add_argument("--only", default="gp,critic,select", help="comma-separated subset of gp,critic,select")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller copy test")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device; the Triton kernels are only benchmarked on a GPU. Nothing to do.")
        return 0
    try:
        import triton  # noqa: F401  (optional: triton ships with CUDA builds of torch)
    except ImportError:
        print("bench_kernels: triton is not installed; nothing to benchmark.")
        return 0
    import fastmine_kernels as fk  # after the check: the kernels import triton

    device_name = torch.cuda.get_device_name()
    out_path = args.out or RESULTS_DIR / f"kernels_{re.sub(r'[^A-Za-z0-9]+', '_', device_name).strip('_')}.json"
    only = set(args.only.split(","))
    copy_gbps = copy_bandwidth_gbps(args.quick)
    print(f"device: {device_name}; copy bandwidth (read+write): {copy_gbps:.0f} GB/s")

    configs = []
    if "gp" in only:
        for shape in [(64, 3, 64, 64), (256, 3, 64, 64), (64, 3, 256, 256), (256, 3, 256, 256)]:
            configs.append(("gp", "x".join(map(str, shape)), lambda s=shape: bench_gp(fk, s, args.quick, copy_gbps)))
    if "critic" in only:
        for batch in (64, 256):
            configs.append(("critic_dcgan64", f"B={batch}", lambda b=batch: bench_critic(fk, b, args.quick, copy_gbps)))
    if "select" in only:
        for k in (64, 1024, 16384):
            for n in (2, 8, 16):
                configs.append(
                    ("select", f"K={k},N={n}", lambda k=k, n=n: bench_select(fk, k, n, args.quick, copy_gbps))
                )

    results, failures = [], []
    print(f"{'kind':16} {'config':18} {'eager ms':>10} {'triton ms':>10} {'speed-up':>9} {'GB/s':>8} {'% copy':>7}")
    for kind, label, fn in configs:
        start = time.time()
        try:
            row = fn()
        except Exception as err:  # one failing configuration does not end the run
            failures.append({"kind": kind, "config": label, "error": f"{type(err).__name__}: {err}",
                             "traceback": traceback.format_exc()[-3000:]})
            print(f"{kind:16} {label:18} FAILED: {type(err).__name__}: {str(err)[:200]}")
            torch.cuda.empty_cache()
            continue
        row.update(kind=kind, config=label, wall_s=time.time() - start)
        results.append(row)
        gbps = f"{row['triton_GBps']:8.0f}" if "triton_GBps" in row else f"{'-':>8}"
        pct = f"{row['triton_pct_of_copy']:6.0f}%" if "triton_pct_of_copy" in row else f"{'-':>7}"
        print(f"{kind:16} {label:18} {row['eager_ms']:10.3f} {row['triton_ms']:10.3f} {row['speedup']:8.2f}x "
              f"{gbps} {pct}")
        torch.cuda.empty_cache()

    settings = {"only": sorted(only), "quick": args.quick, "timing": "triton.testing.do_bench median, ms"}
    device = device_info(DEVICE) | {"copy_bandwidth_GBps": copy_gbps}
    # a failed configuration is a row with its error, beside the measured ones
    write_result(out_path, device=device, config=settings, results=results + failures)
    print(f"wrote {out_path}" + (f"; {len(failures)} configuration(s) failed" if failures else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
