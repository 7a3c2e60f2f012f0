"""Compile the MLA decode split kernel for a GPU architecture offline and report its resources.

No GPU is needed: Triton lowers the kernel for an explicit target (default sm_90a, Hopper)
and runs the ``ptxas`` that ships inside the triton wheel, so the numbers are those of the
real binary: registers per thread and spill bytes (read back from the cubin with the
wheel's ``cuobjdump``), and the dynamic shared memory the launch reserves (Triton's
metadata). What it cannot tell is speed, occupancy under real contention, or correctness
on the device.

    python -m mlabench.kernels.offline_compile            # markdown table for NOTES.md
    python -m mlabench.kernels.offline_compile --json     # one JSON document

Run it without ``TRITON_INTERPRET``: under the interpreter ``triton.jit`` returns an
interpreted function, which cannot be lowered (``compile_config`` refuses it). The tests
call this module in a subprocess with the variable removed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import torch

from mlabench.kernels.mla_decode_launch import (
    DEFAULT_NUM_STAGES,
    LaunchConfig,
    auto_configs,
    auto_fp8_configs,
    choose_config,
    default_block_h,
    default_block_n,
    default_num_warps,
)

# Hopper limits: shared memory per block (227 KiB, cudaDevAttrMaxSharedMemoryPerBlockOptin),
# per SM (228 KiB, of which the driver reserves 1 KiB per resident block) and registers per SM.
SM90_MAX_SHARED = 232448
SM90_SHARED_PER_SM = 233472
SM90_RESERVED_SHARED_PER_BLOCK = 1024
SM90_REGS_PER_SM = 65536
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# A dtype name with this suffix: q in that dtype over DeepSeek's FP8 e4m3 latent rows (KV_FP8 = 1).
FP8_SUFFIX = "+fp8kv"
# (d_c, d_r) of the shapes the check covers: DeepSeek's 512 + 64, a small padded one, and GLA-2 at
# gla-xl (two latent heads of 256 + one RoPE key of 64 per row: the latent-head grid axis).
DIMS = {"deepseek": (512, 64), "small": (64, 16), "gla": (256, 64)}
LATENT_HEADS = {"gla": 2}


@dataclass(frozen=True)
class CompileResult:
    """Resources of one compiled split-kernel variant."""

    dims: str
    dtype: str
    block_h: int
    block_n: int
    num_warps: int
    num_stages: int
    write_final: bool  # True: the single-split variant (stores the output itself)
    n_regs: int  # registers per thread
    spill_bytes: int  # local memory per thread (register spills); 0 for a clean compile
    shared: int  # dynamic shared memory per CTA, bytes
    ptx_target: str  # the PTX ".target" line's architecture, e.g. sm_90a
    page_size: int = 0  # > 0: the paged variant (reads the cache through a block table)

    @property
    def ok(self) -> bool:
        return self.spill_bytes == 0 and self.shared <= SM90_MAX_SHARED

    @property
    def resident_ctas(self) -> int:
        """CTAs of this kernel that fit on one SM at once (registers are allocated per warp in
        multiples of 8 per thread), ignoring the 64-warp and 32-block caps, which never bind here."""
        regs_per_cta = -(-self.n_regs // 8) * 8 * 32 * self.num_warps
        by_regs = SM90_REGS_PER_SM // regs_per_cta
        by_smem = SM90_SHARED_PER_SM // (self.shared + SM90_RESERVED_SHARED_PER_BLOCK)
        return min(by_regs, by_smem)


def _tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} not found in the triton wheel ({path})")
    return path


def _resource_usage(cubin: bytes, kernel_name: str) -> tuple[int, int]:
    """(registers, local bytes) of ``kernel_name`` in ``cubin``, via the wheel's cuobjdump."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path],
                             capture_output=True, text=True, check=True).stdout
    # "Function <name>:\n  REG:183 STACK:0 SHARED:0 LOCAL:0 ..." (one such pair per kernel)
    m = re.search(rf"Function {re.escape(kernel_name)}:\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:\d+\s+LOCAL:(\d+)", out)
    if m is None:
        raise RuntimeError(f"no resource usage for {kernel_name} in cuobjdump output:\n{out}")
    regs, stack, local = (int(g) for g in m.groups())
    return regs, max(stack, local)


def _specialize(jit_fn, args: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as ``JITFunction.run`` derives them from real arguments.

    Pointers aligned to 16 bytes and ints divisible by 16 get ``tt.divisibility`` (which
    decides vector widths, hence registers); an int equal to 1 becomes a constant.
    """
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(jit_fn.params):
        value = args[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[(i,)] = "constexpr", value
            continue
        ty, attr = native_specialize_impl(CUDABackend, value, False, True, True)
        signature[p.name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = value
        elif isinstance(attr, str):
            attrs[(i,)] = CUDABackend.parse_attr(attr)
    return signature, constexprs, attrs


def compile_config(cfg: LaunchConfig, dims: str, dtype: str, write_final: bool, arch: int = 90,
                   page_size: int = 0, sparse: bool = False) -> CompileResult:
    """Compile ``_mla_decode_split_kernel`` for ``cfg`` at ``DIMS[dims]`` and report its resources.

    Arguments mirror a decode launch (S = 1, 128 heads for DeepSeek dims, 16 otherwise),
    so the compiler sees the same specialization a real call triggers; `sparse` compiles the
    index-gathering path (DeepSeek Sparse Attention, 2048 indices per query token).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mlabench.kernels import mla_decode_kernels as mod

    kernel = mod._mla_decode_split_kernel
    if not isinstance(kernel, triton.runtime.jit.JITFunction):
        raise RuntimeError("the kernel was imported under TRITON_INTERPRET=1; compile offline without it")
    dv, dr = DIMS[dims]
    fp8 = dtype.endswith(FP8_SUFFIX)
    torch_dtype = _DTYPES[dtype.removesuffix(FP8_SUFFIX)]
    B, S, H, T, NS = 2, 1, 128 if dims == "deepseek" else 16, 256, 1 if write_final else 2
    G = LATENT_HEADS.get(dims, 1)  # G = 1 is specialized as a constant, so GLA is a separate compile
    # Small CPU tensors with the launch's layout: only dtype, alignment and strides matter.
    q = torch.empty(B, S, H, dv + dr, dtype=torch_dtype)
    # Paged: the pool (pages, page_size, row) and a block table; same element strides otherwise.
    pages, slots = (B * T // page_size, page_size) if page_size else (B, T)
    if fp8:  # the uint8 rows and the fp32-scale and bf16-RoPE views mla_decode passes (one latent head)
        tiles = -(-dv // 128)
        kv = torch.empty(pages, slots, dv + 4 * tiles + 2 * dr, dtype=torch.uint8)
        kv_scale = kv.view(torch.float32)[..., dv // 4: dv // 4 + tiles]
        kv_pe = kv.view(torch.bfloat16)[..., (dv + 4 * tiles) // 2:]
    else:
        kv = torch.empty(pages, slots, G * dv + dr, dtype=torch_dtype)
        kv_scale = kv_pe = kv
    seqlens = torch.empty(B, dtype=torch.int32)
    table = torch.empty(B, T // page_size if page_size else 1, dtype=torch.int32)
    out = torch.empty(B, S, H, dv, dtype=torch_dtype)
    o_part = torch.empty(B, S * H, NS, dv)
    lse_part = torch.empty(B, S * H, NS)
    indices = torch.empty(B, S, 2048, dtype=torch.int32)
    block_dv = max(16, triton.next_power_of_2(dv))
    block_dr = max(16, triton.next_power_of_2(dr))
    values = [
        q, kv, kv_scale, kv_pe, seqlens, o_part, lse_part, out, indices if sparse else seqlens, table,
        *q.stride()[:3], *kv.stride()[:2], *kv_scale.stride()[:2], *kv_pe.stride()[:2], table.stride(0),
        *o_part.stride()[:3], *lse_part.stride()[:2], *out.stride()[:3],
        *(indices.stride()[:2] if sparse else (0, 0)),
        0.1, S, H, G, NS, indices.shape[2] if sparse else 0,
        dv, dr, block_dv, block_dr, cfg.block_h, cfg.block_n,
        write_final, "ieee" if torch_dtype == torch.float32 else "tf32", False, sparse, page_size, 1 if fp8 else 0,
        block_dv // min(128, block_dv), min(128, block_dv),
    ]
    names = [p.name for p in kernel.params]
    if len(values) != len(names):
        raise RuntimeError(f"argument list out of date with the kernel's parameters {names}")
    signature, constexprs, attrs = _specialize(kernel, dict(zip(names, values, strict=True)))
    src = ASTSource(kernel, signature, constexprs, attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    regs, spill = _resource_usage(compiled.asm["cubin"], compiled.metadata.name)
    target = re.search(r"^\.target\s+(\w+)", compiled.asm["ptx"], re.MULTILINE)
    return CompileResult(dims, dtype, cfg.block_h, cfg.block_n, cfg.num_warps, cfg.num_stages, write_final,
                         regs, spill, int(compiled.metadata.shared), target.group(1) if target else "?", page_size)


# Configurations tried and not picked by the launcher, for the record in NOTES.md (--candidates).
CANDIDATES: list[tuple[LaunchConfig, str]] = [
    (LaunchConfig(16, 32, 4, 2, 2), "bf16"),
    (LaunchConfig(32, 32, 4, 3, 2), "bf16"),
    (LaunchConfig(64, 32, 4, 3, 2), "bf16"),
    (LaunchConfig(64, 32, 8, 3, 2), "bf16"),
    (LaunchConfig(64, 32, 8, 2, 2), "bf16"),
    (LaunchConfig(64, 16, 8, 3, 2), "bf16"),
    (LaunchConfig(64, 32, 16, 3, 2), "bf16"),
    (LaunchConfig(16, 32, 4, 3, 2), "fp32"),
    (LaunchConfig(32, 16, 8, 3, 2), "fp32"),
]

Job = tuple[LaunchConfig, str, str, bool, int]  # (config, dims, dtype, write_final, page_size)
PAGED_PAGE_SIZES = (16, 64)  # the serving suite's pages


def auto_jobs() -> list[Job]:
    """The compile matrix for every launcher-picked configuration.

    Per configuration: its first dtype at DeepSeek dims (split and single-split variants)
    and at the small dims, plus each further dtype at DeepSeek dims (fp16 has bf16's tile
    sizes, so one variant shows it lowers the same way), plus the paged split variant at
    DeepSeek dims for each page size the serving suite uses (the block-table address path),
    and for the 16-bit configurations every FP8-cache configuration (`auto_fp8_configs`: bf16
    q over e4m3 rows, split and single-split, and the split variant over a pool of 64-token
    pages; e5m2 differs only in the conversion instruction).
    """
    jobs: list[Job] = []
    for cfg, dtypes in auto_configs().items():
        jobs += [(cfg, "deepseek", dtypes[0], False, 0), (cfg, "deepseek", dtypes[0], True, 0),
                 (cfg, "small", dtypes[0], False, 0)]
        jobs += [(cfg, "deepseek", dt, False, 0) for dt in dtypes[1:]]
        jobs += [(cfg, "deepseek", dtypes[0], False, page) for page in PAGED_PAGE_SIZES]
    for cfg in auto_fp8_configs():
        jobs += [(cfg, "deepseek", "bf16" + FP8_SUFFIX, False, 0), (cfg, "deepseek", "bf16" + FP8_SUFFIX, True, 0),
                 (cfg, "deepseek", "bf16" + FP8_SUFFIX, False, 64)]
    # GLA-2 at gla-xl in bf16: 16 heads over 2 latent heads, 8 query rows per program.
    bh = default_block_h(8, 2)
    gla = LaunchConfig(bh, default_block_n(2), default_num_warps(bh), DEFAULT_NUM_STAGES, 2)
    jobs += [(gla, "gla", "bf16", False, 0), (gla, "gla", "bf16", True, 0)]
    return jobs


def _compile_sparse(write_final: bool, arch: int) -> CompileResult:
    """The sparse path at the configuration the launcher picks for one DeepSeek-V3.2 decode token."""
    return compile_config(choose_config(1, 128, 131072), "deepseek", "bf16", write_final, arch, sparse=True)


def _run_job(job: Job, arch: int) -> CompileResult:
    cfg, dims, dtype, write_final, page_size = job
    return compile_config(cfg, dims, dtype, write_final, arch=arch, page_size=page_size)


def run_jobs(jobs: list[Job], arch: int = 90, workers: int = 1) -> list[CompileResult]:
    """Compile every job; ``workers`` > 1 uses that many processes (each compile is single-threaded)."""
    if workers <= 1:
        return [_run_job(j, arch) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_run_job, jobs, [arch] * len(jobs)))


def markdown_table(results: list[CompileResult]) -> str:
    """The table NOTES.md records."""
    lines = ["| dims | dtype | block_h | block_n | warps | stages | variant | regs | spill B | shared | CTAs/SM |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        variant = ("single-split" if r.write_final else "split") + (f", paged {r.page_size}" if r.page_size else "")
        lines.append(f"| {r.dims} | {r.dtype} | {r.block_h} | {r.block_n} | {r.num_warps} | {r.num_stages} | "
                     f"{variant} | {r.n_regs} | {r.spill_bytes} | {r.shared} B ({r.shared / 1024:.0f} KiB) | "
                     f"{r.resident_ctas} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90 = sm_90a)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    parser.add_argument("--candidates", action="store_true",
                        help="compile the rejected candidates (DeepSeek dims, split variant) instead")
    parser.add_argument("--sparse", action="store_true",
                        help="compile the index-gathering path (DeepSeek-V3.2 decode: 128 heads, bf16) instead")
    args = parser.parse_args(argv)
    if args.sparse:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max(1, min(2, args.jobs))) as pool:
            results = list(pool.map(_compile_sparse, (False, True), [args.arch] * 2))
        print(json.dumps([{**asdict(r), "ok": r.ok, "resident_ctas": r.resident_ctas} for r in results]) if args.json
              else markdown_table(results))
        return 0 if all(r.ok for r in results) else 1
    jobs = ([(cfg, "deepseek", dt, False, 0) for cfg, dt in CANDIDATES] if args.candidates else auto_jobs())
    results = run_jobs(jobs, args.arch, args.jobs)
    if args.json:
        print(json.dumps([{**asdict(r), "ok": r.ok, "resident_ctas": r.resident_ctas} for r in results]))
    else:
        print(markdown_table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
