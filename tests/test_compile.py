"""Every Triton kernel compiled as MAGE launches it, for sm_80 and sm_90, without a GPU
(benchmarks/compile_report.py: the real launchers, Triton's own specialisation of each call, every
autotune config): no binary may spill registers or fail to launch, and the committed report
(benchmarks/results/compile-report.md, made with the GPU machine's Triton) must describe the
kernels as they are."""
import json

import pytest

from helpers import compile_report

REPORT = compile_report()


@pytest.fixture(scope="module")
def rows():
    """Every binary of every launch, compiled once for the module (two processes)."""
    return REPORT.collect(jobs=2)


def _report_rows(text):
    """The committed report's table as dicts keyed by its header."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def test_no_binary_spills_or_cannot_launch(rows):
    """No binary spills, under the GPU machine's Triton (the committed report's) as under CI's
    newer one, whose ptxas allocates registers otherwise (benchmarks/results/compile-report.md
    names the configs chosen so that neither spills)."""
    assert rows and not REPORT.problems(rows)


def test_every_autotune_config_compiles_for_both_archs(rows):
    """Each launch gets one binary per config its autotuner tries on a GPU, for each arch."""
    seen = {}
    for r in rows:
        for launch in r["launches"]:
            seen.setdefault((launch, r["kernel"], r["arch"]), []).append(r)
    launches = {launch for launch, _, _ in seen}
    assert {arch for _, _, arch in seen} == set(REPORT.ARCHS)
    for (launch, kernel, arch), binaries in seen.items():
        assert len(binaries) == binaries[0]["tuned"], (launch, kernel, arch)
        assert (launch, kernel, 80 if arch == 90 else 90) in seen
    assert {"_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq", "_attn_bwd_preprocess", "vq_nearest_kernel",
            "embed_backward_kernel", "restore_backward_kernel"} <= {r["kernel"] for r in rows}
    assert len(launches) == len(REPORT.launch_names())


def test_the_three_lengths_share_a_binary(rows):
    """N = 129, 257, 258 specialise alike, so what the report shows for one holds for all."""
    for r in rows:
        for launch in r["launches"]:
            if " N=129 " in launch:
                assert {launch.replace("N=129", f"N={n}") for n in (257, 258)} <= set(r["launches"]), r


def test_launches_are_specialised_as_on_a_gpu(rows):
    """Aligned pointers and strides divisible by 16 reach the compiler: the 16-bit attention
    forward copies tiles with cp.async (without the alignment it loads element by element), or
    with TMA in the Hopper configs, which the sm_90 training forwards have (warp-specialized or
    not) and sm_80 never."""
    fwd = [r for r in rows if r["kernel"] == "_attn_fwd" and "bf16" in r["launches"][0]]
    assert fwd and all(r["cp_async"] or r["tma"] for r in fwd)
    assert {r["config"].get("WS") for r in fwd if r["tma"] and r["arch"] == 90 and "train" in r["launches"][0]} == {
        False, True} and not any(r["tma"] for r in rows if r["arch"] == 80)
    assert all("wgmma" in r["mma"] for r in fwd if r["arch"] == 90 and r["config"]["BLOCK_M"] >= 64)


def test_a_spilling_config_is_flagged(tmp_path, monkeypatch):
    """The check fails on a spill: a vq config that fits in 255 registers a thread, held to 64
    (ptxas' maxrregcount), must spill. (A config too large for 255 spills too, but takes ptxas
    a minute and a half on two cores.) The figures are those of the ptxas -v run Triton compiles
    with, kept beside the binary in Triton's cache: compiled again from the cache, the same."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    config = dict(BLOCK_N=64, BLOCK_K=128, BLOCK_C=16, num_warps=4, num_stages=2, maxnreg=64)
    spilled = REPORT.collect(jobs=1, archs=(90,), names=["vq ieee 1024x256"], config=config)
    assert len(spilled) == 1 and spilled[0]["spill"] > 0
    assert any("spilled" in line for line in REPORT.problems(spilled))
    [cached] = tmp_path.glob("compile-report/*/vq_nearest_kernel.json")
    assert f"{spilled[0]['spill']} bytes spill stores" in json.loads(cached.read_text())["ptxas_report"]
    assert REPORT.collect(jobs=1, archs=(90,), names=["vq ieee 1024x256"], config=config) == spilled


def test_an_unlaunchable_config_is_flagged():
    row = dict(kernel="k", arch=80, config={}, launches=["x"], regs=255, spill=0, shared=200 * 1024,
               programs_per_sm=REPORT.occupancy(255, 4, 200 * 1024, 80))
    assert row["programs_per_sm"] == 0 and "cannot launch" in REPORT.problems([row])[0]
    assert REPORT.occupancy(255, 16, 0, 90) == 0  # 255 x 512 threads > 64K registers


def test_occupancy_matches_the_cuda_calculator():
    assert REPORT.occupancy(128, 8, 0, 90) == 2
    assert REPORT.occupancy(168, 4, 0, 90) == 3
    assert REPORT.occupancy(170, 4, 0, 90) == 2  # 170 x 32 = 5440 rounds up to 5632 registers a warp
    assert REPORT.occupancy(32, 4, 100 * 1024, 90) == 2
    assert REPORT.occupancy(32, 4, 100 * 1024, 80) == 1
    assert REPORT.occupancy(16, 1, 0, 90) == 32


def test_the_committed_report_is_current(rows):
    """Regenerate with `python benchmarks/compile_report.py` (Triton 3.6) after changing a kernel."""
    import triton
    text = REPORT.REPORT.read_text()
    header = REPORT.report_header(text)
    assert header["kernel sources"] == REPORT.source_hash(), "the compile report is stale: regenerate it"
    table = _report_rows(text)
    assert table and all(r["spill"] == "0" and r["progs/SM"] != "0" for r in table)
    if header["triton"] == triton.__version__:
        assert text == REPORT.render(rows, triton.__version__)
    else:  # another Triton: other registers, the same binaries
        assert len(table) == len(rows)


def test_no_attention_program_gets_a_sliver(rows):
    """At N = 129, 257, 258, with every config, each program's real rows are at least a quarter
    of its block (the last program takes a remainder smaller than that)."""
    attention = [r for r in rows if r["kernel"].startswith("_attn")]
    assert attention and all(4 * REPORT.sliver(r) >= r["config"].get("BLOCK_M", 0) for r in attention
                             if r["kernel"] != "_attn_bwd_dkdv")
    assert all(4 * REPORT.sliver(r) >= r["config"]["BLOCK_N"] for r in attention if r["kernel"] == "_attn_bwd_dkdv")


def test_a_sliver_is_flagged(monkeypatch):
    """With one program per started block (no folding), N = 129 at 64-row tiles leaves a third
    program one real row: the check flags it."""
    from mage_fast.kernels import attention
    row = dict(kernel="_attn_fwd", arch=90, config=dict(BLOCK_M=64, BLOCK_N=64), launches=["attention N=129"],
               regs=128, spill=0, shared=0, programs_per_sm=1)
    assert REPORT.sliver(row) == 64 and not REPORT.problems([row])
    monkeypatch.setattr(attention, "blocks_per_slab", lambda n, block: -(-n // block))
    assert REPORT.sliver(row) == 1 and "1 real rows of its 64" in REPORT.problems([row])[0]
