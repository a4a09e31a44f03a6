"""What ptxas makes of every Triton kernel as MAGE launches it, on a machine without a GPU.

The real launchers (kernels/*.py) are called with CPU tensors of MAGE's shapes while the kernels'
`run` records each launch instead of running it; each recorded launch is then compiled through
Triton's own launch path (`warmup`: the binder's specialisation of that call, so 16-byte-aligned
pointers and strides divisible by 16 are marked, ints equal to 1 become constants), once per
autotune config, for sm_80 and sm_90, against a stand-in driver that only names the target.
N = 129, 257 and 258 specialise alike (none is a multiple of 16), so they share one binary; the
report lists every launch under the binary it gets.

Per binary: registers and spilled bytes (the report of the ptxas -v run Triton compiles it with),
shared memory, programs and warps per SM on the architecture's GPU (H100 for sm_90, A100 for
sm_80), the MMA instructions (wgmma, mma.sync, or neither: FMA), TMA (tensor-descriptor copies)
or not, and static PTX counts of Philox multiplies (mul.hi) and exp2 (ex2.approx).

    python benchmarks/compile_report.py            # writes benchmarks/results/compile-report.md
                                                   # (with Triton 3.6, as on the GPU machine)
    python benchmarks/compile_report.py --check    # exits 1 on a spill or an unlaunchable config
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "results" / "compile-report.md"
# The report is stale when any of these changes.
SOURCES = [*sorted((ROOT / "kernels").glob("*.py")), Path(__file__).resolve()]
ARCHS = (80, 90)

# Per-SM limits of the GPU each architecture is reported for (compute capability 9.0 and 8.0).
GPUS = {90: dict(name="H100", regs_per_sm=65536, shared_per_sm=228 * 1024, shared_per_block=227 * 1024,
                 warps_per_sm=64),
        80: dict(name="A100", regs_per_sm=65536, shared_per_sm=164 * 1024, shared_per_block=163 * 1024,
                 warps_per_sm=64)}


def occupancy(regs: int, warps: int, shared: int, arch: int) -> int:
    """Programs one SM of the architecture's GPU holds: 0 when the config cannot launch at all."""
    from mage_fast.kernels._runtime import programs_per_sm
    gpu = GPUS[arch]
    if shared > gpu["shared_per_block"] or regs > 255:
        return 0
    return programs_per_sm(regs, warps, shared, gpu["regs_per_sm"], gpu["shared_per_sm"], gpu["warps_per_sm"])


def source_hash() -> str:
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- the launches

def _launches():
    """(launch name, function calling a real launcher with CPU tensors of MAGE's shapes)."""
    import torch

    from mage_fast.kernels import attention, token_drop, vq

    def attn(n, heads, d, dtype, dropout):
        def launch():
            qkv = torch.zeros(2, n, 3 * heads * d, dtype=dtype)
            q, k, v = qkv.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
            out = torch.zeros(2, n, heads * d, dtype=dtype).unflatten(-1, (heads, -1)).transpose(1, 2)
            lse = torch.zeros(2, heads, n)
            seed = torch.zeros(1, dtype=torch.int64)
            attention.attention_forward(q, k, v, out, lse, None, seed, dropout, d ** -0.5)
            if dropout:  # training: the backward too (packed dqkv, as the op allocates it)
                dqkv = torch.zeros_like(qkv)
                dq, dk, dv = dqkv.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
                attention.attention_backward(out, q, k, v, out, lse, dq, dk, dv, None, seed, dropout, d ** -0.5)
        return launch

    def vq_nearest(precision):
        def launch():
            z = torch.zeros(2, 256, 16, 16).flatten(2).transpose(1, 2)  # the tokenizer's [B, C, H, W] in place
            vq.vq_nearest_forward(z, torch.zeros(1024, 256), torch.zeros(512, dtype=torch.int64), None, precision)
        return launch

    def drop(d):
        def launch():
            b, kept = 2, 129
            noise, num_masked = torch.zeros(b, 256), torch.zeros(1, dtype=torch.int64)
            keep, masked = token_drop.mask_sets_forward(noise, 128, num_masked)
            ids = torch.zeros(b, 256, dtype=torch.int64)
            word, pos, w = torch.zeros(2025, d), torch.zeros(257, d), torch.zeros(d)
            out, mean, rstd = token_drop.embed_forward(ids, masked, keep, word, pos, w, w, 1e-6, 1100, 2024)
            token_drop.embed_backward(out, ids, masked, keep, word, pos, w, w, mean, rstd, 1100, 2024)
            rows = torch.zeros(b, 257, dtype=torch.int32)
            restored = token_drop.restore_forward(out, rows, masked, pos)
            token_drop.restore_backward(restored, rows, masked, kept, torch.float32, torch.float32)
        return launch

    launches = []
    for n in (129, 257, 258):
        for heads, d in ((12, 64), (16, 48)):
            for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
                for dropout in (0.1, 0.0):
                    mode = "train" if dropout else "sample"
                    launches.append((f"attention {tag} N={n} d={d} {mode}", attn(n, heads, d, dtype, dropout)))
    launches += [(f"vq {p} 1024x256", vq_nearest(p)) for p in ("ieee", "tf32x3")]
    launches += [(f"token_drop D={d}", drop(d)) for d in (768, 1024)]
    return launches


def _record(launch):
    """The (kernel or autotuner, args, kwargs) of every kernel launch `launch` makes."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from mage_fast.kernels import token_drop
    calls, saved = [], (Autotuner.run, JITFunction.run, token_drop.persistent_programs)

    def recording(self, *args, **kwargs):
        kwargs.pop("warmup", None)
        calls.append((self, args, kwargs))

    Autotuner.run = JITFunction.run = recording
    token_drop.persistent_programs = lambda kernel, args, meta, device: 1  # needs a GPU; the grid only
    try:
        launch()
    finally:
        Autotuner.run, JITFunction.run, token_drop.persistent_programs = saved
    return calls


class _TargetOnly:
    """The driver Triton asks for the target while compiling; nothing is loaded or launched."""

    def __init__(self, arch):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        # Triton keeps a kernel's compiled binaries per device: one "device" per architecture,
        # or sm_80 would be handed the sm_90 binary from that cache.
        return self.target.arch

    def get_current_stream(self, device=None):
        return 0


def _keep_ptxas_reports():
    """Triton runs ptxas -v on each kernel it compiles and drops what it reports (registers,
    spill stores, stack frame) unless told to print it: here it prints into the kernel's
    metadata, which Triton's cache keeps beside the binary. One ptxas run a binary, Triton's own
    (running ptxas again with the options rebuilt from Triton's source gave other spill counts
    under newer Triton). These binaries go to a folder of their own in Triton's cache, so a
    binary compiled elsewhere (a run of the kernels) without the report is never read here."""
    import contextlib
    import io

    from triton import knobs
    from triton.backends.nvidia.compiler import CUDABackend
    make_cubin = CUDABackend.make_cubin

    def reporting(self, src, metadata, opt, capability):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            cubin = make_cubin(self, src, metadata, opt, capability)
        metadata["ptxas_report"] = log.getvalue()
        return cubin
    knobs.nvidia.dump_ptxas_log = True  # make_cubin's only use of it: print the log
    knobs.cache.dir = os.path.join(knobs.cache.dir, "compile-report")
    CUDABackend.make_cubin = reporting


def _ptxas(compiled) -> dict:
    """Registers, spilled bytes (stores) and stack frame from the ptxas -v report Triton's
    compile left in the kernel's metadata. The stack frame alone is no measure of spilling: a
    call to a slow path (fp32 division's, for one) takes a frame with nothing spilled."""
    report = getattr(compiled.metadata, "ptxas_report", None)
    if report is None:
        raise RuntimeError(f"{compiled.name}: Triton's cache holds it without ptxas' report; compiled with other "
                           "options than this script's?")
    used = re.search(r"Used (\d+) registers", report)
    frame, stores = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", report).groups()
    return dict(regs=int(used.group(1)), spill=int(stores), stack=int(frame))


def _mma(ptx):
    kinds = [name for name, op in (("wgmma", "wgmma.mma_async"), ("mma.sync", "mma.sync")) if op in ptx]
    return "+".join(kinds) or "fma"


def _row(kernel, config, arch, compiled):
    ptx = compiled.asm["ptx"]
    res = _ptxas(compiled)
    warps = compiled.metadata.num_warps  # a warp-specialized loop adds warp groups to the config's
    programs = occupancy(res["regs"], warps, compiled.metadata.shared, arch)
    return dict(kernel=kernel, arch=arch, config=config, **res, shared=compiled.metadata.shared,
                programs_per_sm=programs, warps_per_sm=programs * warps, mma=_mma(ptx),
                tma="cp.async.bulk.tensor" in ptx, cp_async=bool(re.search(r"cp\.async\.c[ag]", ptx)),
                philox=ptx.count("mul.hi.u32"), exp2=ptx.count("ex2.approx"), hash=compiled.hash)


def _config(tuner_config, kwargs):
    if tuner_config is None:
        return dict({k: v for k, v in kwargs.items() if k.isupper()}, num_warps=kwargs.get("num_warps", 4),
                    num_stages=kwargs.get("num_stages", 3))
    return dict(tuner_config.kwargs, num_warps=tuner_config.num_warps, num_stages=tuner_config.num_stages)


def compile_launches(names, archs=ARCHS, config=None) -> list:
    """Rows for every binary the named launches compile (run in a process without TRITON_INTERPRET).
    config: {block sizes..., num_warps, num_stages, optionally maxnreg} compiled instead of each
    autotuner's own configs."""
    import triton
    from triton.runtime.driver import driver
    _keep_ptxas_reports()
    rows = {}
    for name, launch in _launches():
        if name not in names:
            continue
        for obj, args, kwargs in _record(launch):
            tuner = obj if hasattr(obj, "configs") else None
            fn = tuner.fn if tuner else obj
            if tuner and config:
                blocks = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages", "maxnreg")}
                tuner.configs = [triton.Config(blocks, num_warps=config["num_warps"], num_stages=config["num_stages"],
                                               maxnreg=config.get("maxnreg"))]
                tuner.early_config_prune = None  # compile it for every architecture
            for arch in archs:
                driver.set_active(_TargetOnly(arch))  # this process never needs a real one
                compiled = tuner.warmup(*args, **kwargs) if tuner else [fn.warmup(*args, **kwargs)]
                if tuner:  # warmup cleared the arguments a pruning function may read
                    tuner.nargs = dict(zip(tuner.arg_names, args))
                configs = tuner.prune_configs(kwargs) if tuner else [None]  # the architecture's own
                for cfg, k in zip(configs, compiled):
                    k = k.result() if hasattr(k, "result") else k
                    row = rows.get((k.hash, arch))
                    if row is None:
                        row = rows[k.hash, arch] = _row(fn.__name__, _config(cfg, kwargs), arch, k)
                        row["launches"], row["tuned"] = [], len(configs)
                    if name not in row["launches"]:
                        row["launches"].append(name)
    return list(rows.values())


def _compile_env():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MAGE_FAST_TRITON_INTERPRET")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def collect(jobs=2, archs=ARCHS, names=None, config=None) -> list:
    """compile_launches over `jobs` processes (the compiles are CPU-bound), rows in a fixed order."""
    names = names or launch_names()
    env = _compile_env()

    def worker(part):
        spec = json.dumps({"names": part, "archs": list(archs), "config": config})
        proc = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True, env=env)
        if proc.returncode:
            raise RuntimeError(f"compiling {part} failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # Launches that differ only in N compile the same binaries, and token drop's two widths
    # share three kernels: one worker takes each such group, so that its launches after the
    # first hit Triton's cache instead of compiling the same binaries again in another worker.
    groups = {}
    for name in names:
        groups.setdefault(re.sub(r" [ND]=\d+", "", name), []).append(name)
    # Dealt out in turn, the heaviest first (training compiles four kernels, bf16 the largest):
    # in launch order one worker got every training group and ran alone for most of the time.
    heavy_first = sorted(groups.values(), key=lambda g: (" train" not in g[0], "bf16" not in g[0]))
    parts = [sum(heavy_first[i::jobs], []) for i in range(jobs)]
    with ThreadPoolExecutor(jobs) as pool:
        merged = {}
        for rows in pool.map(worker, [p for p in parts if p]):
            for row in rows:
                key = (row["hash"], row["arch"])
                if key in merged:
                    merged[key]["launches"] += [n for n in row["launches"] if n not in merged[key]["launches"]]
                else:
                    merged[key] = row
    order = {name: i for i, name in enumerate(names)}
    for row in merged.values():
        row["launches"].sort(key=order.__getitem__)
    return sorted(merged.values(), key=lambda r: (order[r["launches"][0]], r["kernel"], -r["arch"],
                                                  json.dumps(r["config"], sort_keys=True)))


def launch_names() -> list:
    """The launches' names, listed in a process without TRITON_INTERPRET (the kernel modules
    hold other autotuners under it)."""
    return json.loads(subprocess.run([sys.executable, __file__, "--names"], capture_output=True, text=True,
                                     check=True, env=_compile_env()).stdout)


# The block an attention kernel's programs tile N by (the query side, or the key side for dk/dv).
_ROW_BLOCK = {"_attn_fwd": "BLOCK_M", "_attn_bwd_dq": "BLOCK_M", "_attn_bwd_dkdv": "BLOCK_N",
              "_attn_bwd_preprocess": "BLOCK_M"}


def sliver(row) -> int:
    """The fewest real rows any program of an attention binary's launches gets, over its
    block (0 where the binary is not attention): under 1/4, a program streams a whole slab for a
    sliver of it."""
    from mage_fast.kernels.attention import blocks_per_slab
    if row["kernel"] not in _ROW_BLOCK:
        return 0
    block = row["config"][_ROW_BLOCK[row["kernel"]]]
    fewest = block
    for launch in row["launches"]:
        n = int(re.search(r"N=(\d+)", launch).group(1))
        fewest = min(fewest, n - (blocks_per_slab(n, block) - 1) * block)
    return fewest


def problems(rows) -> list:
    """One line per binary that spills, cannot launch, or has a program whose real rows are under
    a quarter of its block."""
    bad = []
    for r in rows:
        where = f"{r['kernel']} sm_{r['arch']} {r['config']} ({r['launches'][0]})"
        if r["spill"]:
            bad.append(f"{where}: {r['spill']} bytes spilled ({r['regs']} registers)")
        if not r["programs_per_sm"]:
            bad.append(f"{where}: cannot launch ({r['regs']} registers, {r['shared']} bytes of shared memory)")
        block = r["config"].get(_ROW_BLOCK.get(r["kernel"]), 0)
        if 4 * sliver(r) < block:
            bad.append(f"{where}: a program with {sliver(r)} real rows of its {block}")
    return bad


# ----------------------------------------------------------------------------- the report

def _config_text(config):
    blocks = "x".join(str(v) for k, v in config.items() if k.startswith("BLOCK") or k in ("ROWS", "BATCH"))
    return f"{blocks} w{config['num_warps']} s{config['num_stages']}" + (" ws" if config.get("WS") else "")


def render(rows, triton_version) -> str:
    lines = [
        "# Compile report",
        "",
        "Every Triton kernel as MAGE launches it, compiled without a GPU by `benchmarks/compile_report.py`",
        "(regenerate it after any change to `kernels/`: `tests/test_compile.py` fails while it is stale).",
        "One row per binary: every autotune config, sm_90 (figures for an H100) and sm_80 (an A100).",
        "Launches: attention at N = 129, 257, 258 (one binary: none is a multiple of 16), head dims 64",
        "(MAGE-B encoder, MAGE-L) and 48 (MAGE-B decoder), bf16 and fp32, training (dropout 0.1, forward and",
        "backward) and sampling (forward, no dropout); vq over MAGE's 1024 x 256 codebook; token drop at",
        "D = 768 and 1024. `spill`: bytes of spill stores (ptxas -v); `progs/SM`, `warps/SM`: resident",
        "programs and warps per SM (registers, shared memory, warp and block limits); `mul.hi` (Philox's",
        "multiplies) and `ex2` are static PTX instruction counts. `--check` (and tests/test_compile.py) fail",
        "on a spill, an unlaunchable config, or an attention program whose real rows are under a quarter",
        "of its block.",
        "",
        f"- triton: {triton_version}",
        f"- kernel sources: {source_hash()}",
        "",
        "| kernel | launches | arch | config | regs | spill | shared | progs/SM | warps/SM | mma | tma | mul.hi "
        "| ex2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        launches = "; ".join(r["launches"])
        lines.append(f"| {r['kernel']} | {launches} | sm_{r['arch']} | {_config_text(r['config'])} | {r['regs']} | "
                     f"{r['spill']} | {r['shared']} | {r['programs_per_sm']} | {r['warps_per_sm']} | {r['mma']} | "
                     f"{'yes' if r['tma'] else 'no'} | {r['philox']} | {r['exp2']} |")
    return "\n".join(lines) + "\n"


def report_header(text: str) -> dict:
    """The triton version and kernel-source hash a report was made from."""
    return dict(re.findall(r"^- (triton|kernel sources): (\S+)$", text, re.M))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compile and check only; write nothing")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=REPORT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--names", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.names:
        print(json.dumps([name for name, _ in _launches()]))
        return 0
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(compile_launches(spec["names"], spec["archs"], spec["config"])))
        return 0
    import triton
    start = time.time()
    rows = collect(args.jobs)
    # On the GPU machine this is also what autotuning every launch compiles (its benchmarking aside).
    print(f"compiled {len(rows)} binaries in {time.time() - start:.0f} s on {args.jobs} processes "
          f"(triton {triton.__version__})")
    bad = problems(rows)
    for line in bad:
        print(line)
    if not args.check:
        args.out.write_text(render(rows, triton.__version__))
        print(f"wrote {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
