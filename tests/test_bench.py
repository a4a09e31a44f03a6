"""`mage-fast bench` (what `make bench` runs): end to end on CPU, its JSON, the MFU and roofline
arithmetic, and machines without NVML."""
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import strict_json
from mage_fast.bench import flops, measure
from mage_fast.bench.report import collect, describe, speedup_bars, table
from mage_fast.bench.workloads import Result, _largest_batch_that_fits, sample_workloads
from mage_fast.cli import main
from mage_fast.configs import CONFIGS
from mage_fast.roofline import roofline_for
from mage_fast.telemetry import nvml_snapshot


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run of the bench")
def test_bench_runs_end_to_end_and_writes_json(tmp_path, capsys):
    main(["bench", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "No GPU" in out and "images_per_s" in out and "sample T=12" in out and "finetune" in out
    record = strict_json(next(tmp_path.glob("cpu-*[0-9].json")).read_text())
    for key in ("device", "date", "versions", "nvml", "nvml_after", "roofline", "model", "sections"):
        assert key in record, key
    assert record["model"] == "mage_vit_tiny_test" and record["roofline"] is None
    assert list(record["sections"])[0] == "workloads-mage_vit_tiny_test"
    rows = record["sections"]["workloads-mage_vit_tiny_test"]
    assert [(r["workload"], r["implementation"]) for r in rows] == [
        ("train from images", "reference fp32"), ("train from images", "fast fp32"), ("train from tokens", "fast fp32"),
        ("train class-conditional", "fast fp32"), ("train MAGE-C", "fast fp32"), ("tokenize", "fast fp32"),
        ("finetune", "reference fp32"),
        ("finetune", "fast fp32"), ("sample T=12", "reference fp32 (official)"), ("sample T=12", "fast sampler fp32"),
        ("sample T=12 guided", "fast sampler fp32")]
    assert rows[2]["baseline"] == "train from images: fast fp32"   # the same module, batch and precision
    assert rows[2]["speedup"] == rows[2]["images_per_s"] / rows[1]["images_per_s"]
    assert rows[2]["flops_per_image"] < rows[1]["flops_per_image"]
    assert rows[4]["baseline"] == "train from tokens: fast fp32"   # MAGE-C beside MAGE's step from ids
    assert rows[4]["flops_per_image"] > 2 * rows[2]["flops_per_image"]   # two views and the head
    assert rows[5]["baseline"] is None and rows[5]["speedup"] is None  # the tokenizer has nothing to beat
    assert rows[3]["baseline"] == "train from tokens: fast fp32"   # over the unconditional step from ids
    assert rows[3]["flops_per_image"] < rows[2]["flops_per_image"]  # the frozen encoder has no backward
    assert rows[-1]["baseline"] == "sample T=12: fast sampler fp32"
    assert rows[-1]["flops_per_image"] > rows[-2]["flops_per_image"]    # two passes a step
    for r in rows:
        assert r["median_ms"] > 0 and r["images_per_s"] > 0 and r["tflops"] > 0 and r["ms_p20"] <= r["ms_p80"]
        assert r["speedup"] is None if r["workload"] == "tokenize" else r["speedup"] > 0
        assert math.isclose(r["images_per_s"], r["batch"] / (r["median_ms"] / 1e3))
        assert r["mfu"] is None                                # no roofline for a CPU
        assert r["peak_memory_gib"] is None                    # no allocator figure off the GPU: null, not NaN
    for kernel in ("attention", "vq", "token_drop", "decode_step", "mlm_loss"):
        rows = record["sections"][kernel]
        assert speedup_bars(kernel, rows), kernel  # our rows follow the scripts' shared convention
    assert "of_bound" in record["columns"]["attention"]
    assert all(r["of_bound"] is None for r in record["sections"]["attention"] if "ms" in r)  # no roofline: null
    assert (tmp_path / (next(tmp_path.glob("cpu-*[0-9].json")).stem + ".md")).exists()


def test_the_fast_sampler_is_also_timed_at_the_reference_batch(monkeypatch):
    """At a batch other than the reference's, a second fast row at the reference's batch gives
    the same-batch comparison; every timed call draws other images (seeds move on)."""
    from mage_fast.sampling.sampler import Sampler
    seeds, sample = [], Sampler.sample
    monkeypatch.setattr(Sampler, "sample", lambda self, s: (seeds.append(s.tolist()), sample(self, s))[1])
    rows = sample_workloads("mage_vit_tiny_test", 2, 2, torch.device("cpu"), warmup=1, repeats=2)
    assert [(r.implementation, r.batch, r.baseline) for r in rows] == [
        ("reference fp32 (official)", 1, "reference fp32 (official)"),
        ("fast sampler fp32", 2, "reference fp32 (official)"),
        ("fast sampler fp32", 1, "reference fp32 (official)")]
    assert seeds == [[0, 1], [2, 3], [4, 5], [0], [1], [2]]


def test_training_cases_rotate_their_inputs(monkeypatch):
    """Each timed step trains on the next of the rotating batches, with its own mask ratio."""
    from mage_fast.bench import workloads
    seen = []
    real_step = workloads._train_step

    def recording_step(model, dtype, capturable=False, input="images", trained=None):
        step = real_step(model, dtype, capturable, input, trained)
        return lambda batch, mask_ratio=None: (seen.append((input, batch.dtype, batch.data_ptr(), mask_ratio)),
                                               step(batch, mask_ratio))[1]
    monkeypatch.setattr(workloads, "_train_step", recording_step)
    steps = workloads.ROTATE + 1
    workloads.train_workloads("mage_vit_tiny_test", 1, torch.device("cpu"), warmup=0, repeats=steps)
    # The reference's steps from images, then the fast module's, then the fast module's from ids.
    kinds = [(i, d) for i, d, _, _ in seen]
    assert kinds == [("images", torch.float32)] * 2 * steps + [("tokens", torch.int16)] * steps
    for case in (seen[steps:2 * steps], seen[2 * steps:]):
        assert len({ptr for _, _, ptr, _ in case[:-1]}) == workloads.ROTATE and case[-1][2] == case[0][2]
        assert len({ratio for *_, ratio in case}) == len(case) and all(0.5 <= r <= 1 for *_, r in case)


def test_training_rows_time_the_step_that_train_and_finetune_take(monkeypatch, tmp_path):
    """The bench's training, class-conditional, MAGE-C and fine-tuning rows call the run layer's
    train_step, the function `train` and `finetune` call for every step (optimizer included),
    and each row names it."""
    from mage_fast.bench import workloads
    from mage_fast.runs import steps
    from mage_fast.training import TrainConfig, train
    calls = []
    real = steps.train_step

    def spy(batches, accum, loss_of, optimization, ddp=None):
        calls.append(type(optimization.optimizer).__name__)
        return real(batches, accum, loss_of, optimization, ddp)
    monkeypatch.setattr(steps, "train_step", spy)
    cpu = torch.device("cpu")
    rows = workloads.train_workloads("mage_vit_tiny_test", 1, cpu, warmup=0, repeats=1)
    rows += workloads.class_conditional_workloads("mage_vit_tiny_test", 1, cpu, warmup=0, repeats=1)
    rows += workloads.contrastive_workloads("mage_vit_tiny_test", 2, cpu, warmup=0, repeats=1)
    rows += workloads.finetune_workloads("mage_vit_tiny_test", 1, cpu, warmup=0, repeats=1, num_classes=10)
    assert len(calls) == len(rows) == 7 and set(calls) == {"AdamW"}
    assert all("runs.steps.train_step" in r.as_dict()["step"] for r in rows)
    assert [r.as_dict()["step"].split("`")[1] for r in rows] == \
        ["mage-fast train"] * 4 + ["mage-fast train --contrastive"] + ["mage-fast finetune"] * 2
    contrastive = rows[4]
    assert (contrastive.workload, contrastive.baseline, contrastive.baseline_workload, contrastive.batch) == \
        ("train MAGE-C", "fast fp32", "train from tokens", 2)
    calls.clear()
    image = tmp_path / "img"
    image.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image / "0.png")
    with torch.random.fork_rng():
        train(TrainConfig(data=image, out=tmp_path / "out", model="mage_vit_tiny_test", device="cpu", batch_size=1,
                          epochs=1, warmup_epochs=0))
    assert calls == ["AdamW"]


def test_finetune_cases_train_the_classifier_on_rotating_inputs(monkeypatch):
    """The fine-tuning row: the fast classifier against the reference (on CUDA the official way,
    fp16 with a loss scaler), each step on the next batch and soft targets, the weights moving."""
    from mage_fast.bench import workloads
    seen, heads = [], []
    real_step = workloads._finetune_step

    def recording_step(model, dtype):
        step = real_step(model, dtype)
        heads.append((model, model.head.weight.detach().clone()))
        return lambda images, targets: (seen.append((type(model).__name__, images.data_ptr(), targets.sum().item())),
                                        step(images, targets))[1]
    monkeypatch.setattr(workloads, "_finetune_step", recording_step)
    rows = workloads.finetune_workloads("mage_vit_tiny_test", 1, torch.device("cpu"), warmup=0,
                                        repeats=workloads.ROTATE + 1, num_classes=10)
    assert [(r.workload, r.implementation, r.baseline, r.batch) for r in rows] == [
        ("finetune", "reference fp32", "reference fp32", 1), ("finetune", "fast fp32", "reference fp32", 1)]
    assert [name for name, _, _ in seen] == ["MAGEClassifier"] * 4 + ["FastMAGEClassifier"] * 4
    fast = seen[4:]
    assert len({ptr for _, ptr, _ in fast[:-1]}) == workloads.ROTATE and fast[-1][1] == fast[0][1]
    assert all(abs(total - 1) < 1e-5 for _, _, total in fast)      # one distribution per image
    assert all(not torch.equal(model.head.weight, before) for model, before in heads)
    # The FLOPs: 3x the matmuls of the classifier's forward (counted, tokenizer aside) + the tokenizer's.
    from torch.utils.flop_counter import FlopCounterMode

    from mage_fast.bench.flops import tokenizer_flops
    model = heads[0][0]
    ids = torch.zeros(2, 256, dtype=torch.long)
    monkeypatch.setattr(model, "_tokenize", lambda images: ids)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(2, 3, 256, 256))
    assert rows[1].flops_per_image == 3 * counter.get_total_flops() / 2 + tokenizer_flops(model.config)


@pytest.mark.parametrize("flag", ["--repeats=0", "--batch=-1", "--warmup=-1", "--num-iter=x"])
def test_bench_refuses_bad_numbers_before_it_starts(flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", flag])
    assert e.value.code == 2 and flag.split("=")[0] in capsys.readouterr().err


def test_training_from_tokens_drops_the_tokenizers_flops():
    """The tokenizer is 44% of a MAGE-B training step's FLOPs (129 of 291 GFLOP per image)."""
    cfg = CONFIGS["mage_vit_base_patch16"]
    tokenizer = flops.tokenizer_flops(cfg)
    assert flops.train_flops_per_image(cfg) - flops.train_flops_per_image(cfg, tokenizer=False) == tokenizer
    assert round(tokenizer / 1e9) == 129 and round(tokenizer / flops.train_flops_per_image(cfg), 2) == 0.44


def test_throughput_and_mfu_arithmetic():
    r = Result("train", "fast", batch=10, ms=[90.0, 100.0, 500.0], flops_per_image=1e12)
    assert r.median_ms == 100.0 and r.images_per_s == 100.0
    assert r.tflops == 100.0 and r.mfu(1000.0) == pytest.approx(0.1) and r.mfu(None) is None
    row = r.as_dict(peak_tflops=1000.0, baseline_images_per_s=40.0)
    assert row["speedup"] == 2.5 and row["mfu"] == pytest.approx(0.1)


def test_compare_rates_fractions_and_speedups(monkeypatch):
    """The per-kernel scripts' shared arithmetic: rates from the median ms, the fraction of the
    device's roofline, speed-ups over the first implementation."""
    times = {"torch": 2.0, "mage_fast": 0.5}
    monkeypatch.setattr(measure, "bench_ms", lambda fn: {"ms": times[fn()]})
    impls = {name: (lambda name=name: name) for name in times}
    record = {"roofline": {"bf16_tflops": 1000.0, "hbm_tbps": 2.0}}
    slow, fast = measure.compare(impls, {"shape": "4x4"}, record, flop=1e12, nbytes=1e9)
    assert list(slow)[:2] == ["shape", "impl"] and slow["shape"] == "4x4"
    assert (slow["tflops"], slow["of_peak"], slow["gb_s"], slow["of_hbm"]) == (500.0, 0.5, 500.0, 0.25)
    assert (slow["speedup"], fast["speedup"], fast["baseline"]) == (1.0, 4.0, "torch")
    assert measure.compare(impls, {}, {"roofline": None}, flop=1e12)[0]["of_peak"] is None
    assert speedup_bars("vq", [slow, fast]) == [("vq 4x4: mage_fast vs torch", 4.0)]


def test_attainable_roofline_at_an_arithmetic_intensity():
    """Attention at N = 257, d = 64 in bf16 (one head forward: 4 N^2 d FLOP over 4 N d 2-byte
    tensors, N/2 FLOP/byte) is bandwidth-bound on an H100: 128.5 x 3.35 TB/s."""
    h100 = {"roofline": roofline_for("NVIDIA H100 80GB HBM3").__dict__}
    n, d = 257, 64
    assert measure.attainable_tflops(h100, 4 * n * n * d, 4 * n * d * 2) == pytest.approx(128.5 * 3.35)
    assert measure.attainable_tflops(h100, 1e15, 1e9) == 989.0              # compute-bound: the peak
    assert measure.attainable_tflops({"roofline": None}, 1.0, 1.0) is None


def test_attention_rows_report_against_the_recounted_bound(monkeypatch, tmp_path):
    """bench_attention's of_bound is mage_fast.roofline.of_bound of the padded, recomputed work
    on the record's device (an H100 SXM here), null in strict JSON where no roofline is known."""
    import os
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    try:
        import bench_attention
    finally:
        sys.path.pop(0)
    from mage_fast.bench.report import write
    from mage_fast.ops.attention import attention_ref
    from mage_fast.roofline import of_bound
    monkeypatch.setattr(bench_attention, "measure", lambda make, q, k, v, do, mode: ({"ms": 0.5}, q))
    impls = {"mage_fast": lambda q, k, v: ([q, k, v], attention_ref)}
    h100 = {"device": "NVIDIA H100 80GB HBM3", "roofline": roofline_for("NVIDIA H100 80GB HBM3").__dict__}
    rows = bench_attention.bench_shape(impls, "B-dec", 4, 16, 257, 48, torch.float32, "cpu", h100)
    assert [r["mode"] for r in rows] == ["fwd", "fwd+bwd"]
    for r in rows:
        work = flops.attention_work(4, 16, 257, 48, backward=r["mode"] == "fwd+bwd")
        assert r["of_bound"] == of_bound(h100["roofline"], work, 0.5)
        # The bound is the slowest unit: at d = 48 padded to 64, more than the useful FLOPs allow.
        assert r["of_bound"] > work["flop"] / 989e12 * 1e3 / 0.5
    cpu = {**measure.device_record(), "device": "cpu", "roofline": None}
    rows = bench_attention.bench_shape(impls, "B-dec", 1, 2, 33, 48, torch.float32, "cpu", cpu)
    assert [r["of_bound"] for r in rows] == [None, None]
    path = write(str(tmp_path), cpu, {"attention": (rows, bench_attention.COLUMNS)}, "attention")
    saved = strict_json(open(path + ".json").read())["sections"]["attention"]
    assert [r["of_bound"] for r in saved] == [None, None] and "of_bound | err" in open(path + ".md").read()


@pytest.mark.parametrize("name,roof,tflops,tbps", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0, 3.35),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0, 2.0),
    ("NVIDIA H200", "H200", 989.0, 4.8),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM 40GB", 312.0, 1.555),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB", 312.0, 2.04),
])
def test_roofline_table(name, roof, tflops, tbps):
    r = roofline_for(name)
    assert (r.name, r.bf16_tflops, r.hbm_tbps) == (roof, tflops, tbps)


def test_unknown_device_has_no_roofline():
    assert roofline_for("cpu") is None and roofline_for("Some GPU") is None


def test_nvml_missing_is_a_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert nvml_snapshot() == {"error": "nvidia-ml-py is not installed"}
    record = {"versions": {"torch": "x", "torch_cuda": None, "triton": None, "python": "3"},
              "nvml": nvml_snapshot(), "roofline": None}
    assert "NVML: nvidia-ml-py is not installed" in describe(record)


def test_nvml_without_a_driver(monkeypatch):
    pynvml = pytest.importorskip("pynvml")

    def no_driver():
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    snapshot = nvml_snapshot()
    assert list(snapshot) == ["error"] and snapshot["error"].startswith("NVML unavailable")


def test_table_shows_missing_values_as_dashes():
    text = table([{"a": 1.23456, "b": float("nan"), "c": None}], ["a", "b", "c"])
    assert text.splitlines()[-1].split() == ["1.23", "-", "-"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run of the scripts")
def test_scripts_run_in_stages_and_collect_into_one_report(tmp_path):
    """As a GPU session runs them: one script per call, then collect.py merges their files."""
    import os
    import subprocess
    benchmarks = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")

    def script(*args):
        proc = subprocess.run([sys.executable, *args], cwd=benchmarks, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout
    script("bench_vq.py", "--smoke", "--results-dir", str(tmp_path))
    script("bench_train.py", "--smoke", "--repeats", "1", "--results-dir", str(tmp_path))
    train = strict_json(next(tmp_path.glob("*-train-mage_vit_tiny_test.json")).read_text())
    implementations = {r["implementation"] for r in train["sections"]["train-mage_vit_tiny_test"]}
    assert implementations == {"reference fp32", "fast fp32"}
    prefix = next(tmp_path.glob("*-vq.json")).name[:-len("-vq.json")]
    out = script("collect.py", "--results-dir", str(tmp_path), "--prefix", prefix)
    merged = strict_json((tmp_path / f"{prefix}.json").read_text())
    assert list(merged["sections"]) == ["train-mage_vit_tiny_test", "vq"]  # the report's order, not the files'
    assert merged["columns"]["vq"][:2] == ["shape", "impl"] and merged["device"] == "cpu"
    md = (tmp_path / f"{prefix}.md").read_text()
    assert "## train-mage_vit_tiny_test" in md and "## vq" in md and "mage_fast vq_nearest" in md
    pytest.importorskip("matplotlib")
    assert (tmp_path / f"{prefix}.png").stat().st_size > 0 and f"{prefix}.png" in out
    with pytest.raises(FileNotFoundError, match="no results"):
        collect(str(tmp_path), "elsewhere-2000-01-01")


def test_a_case_out_of_memory_runs_at_a_smaller_batch(caplog):
    """One case that does not fit (the reference at batch 256) must not lose the whole run."""
    tried = []

    def run(batch):
        tried.append(batch)
        if batch > 64:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return batch
    assert _largest_batch_that_fits("reference fp16", 256, torch.device("cpu"), run) == 64 and tried == [256, 128, 64]
    assert "reference fp16: out of memory at batch 256, running it at 128" in caplog.text
    with pytest.raises(torch.OutOfMemoryError):  # not even one image fits
        _largest_batch_that_fits("too big", 8, torch.device("cpu"), lambda batch: run(batch * 1000))


def fake_results(workload, *ms_lists):
    """Results of a workload's implementations ("reference", then "fast" over it), with these
    ms per repeat."""
    names = ["reference", "fast"]
    return [Result(workload, names[i], 2, list(ms), 1e9, None, "reference") for i, ms in enumerate(ms_lists)]


def test_tables_show_the_spread_and_mark_noisy_speedups():
    """p20-p80 beside the median; a speed-up is noisy where its row's or its baseline's p20-p80
    spans more than a fifth of the median, and its bar is labelled so (the plot greys it)."""
    from mage_fast.bench.report import NOISY, with_spread
    from mage_fast.bench.workloads import COLUMNS, as_rows
    steady = as_rows(fake_results("train", [10, 10, 10, 10, 10], [5, 5, 5.1, 5, 5]), None)
    shaky = as_rows(fake_results("sample", [10, 2, 10, 30, 10], [5, 5, 5, 5, 5]), None)  # the baseline's spread
    rows = with_spread(steady + shaky)
    assert [r["noisy"] for r in rows] == [False, False, True, True]
    assert rows[1]["ms_p20"] == 5.0 and rows[1]["ms_p80"] == pytest.approx(5.02)
    lines = table(steady + shaky, COLUMNS).splitlines()
    assert lines[0].split()[3:5] == ["median_ms", "p20-p80"]
    assert lines[3].split()[4] == "5-5.02" and not lines[3].endswith(NOISY)
    assert lines[5].split()[4] == "5-5" and lines[5].endswith("2" + NOISY)  # 10 ms over 5: 2x, noisy
    assert speedup_bars("workloads", steady + shaky) == [
        ("train B2: fast vs reference", 2.0), ("sample B2: fast vs reference" + NOISY, 2.0)]
    # The kernel scripts' rows: the baseline is the same case's implementation of that name.
    kernel = [{"shape": "4x4", "impl": "torch", "ms": 2.0, "ms_p20": 1.0, "ms_p80": 3.0, "baseline": "torch"},
              {"shape": "4x4", "impl": "mage_fast", "ms": 1.0, "ms_p20": 1.0, "ms_p80": 1.1, "baseline": "torch",
               "speedup": 2.0},
              {"shape": "8x8", "impl": "torch", "ms": 2.0, "ms_p20": 2.0, "ms_p80": 2.0, "baseline": "torch"},
              {"shape": "8x8", "impl": "mage_fast", "ms": 1.0, "ms_p20": 1.0, "ms_p80": 1.1, "baseline": "torch",
               "speedup": 2.0}]
    assert [r["noisy"] for r in with_spread(kernel)] == [True, True, False, False]


def test_bench_keeps_its_files_reports_progress_and_lists_warnings(tmp_path, monkeypatch, capsys, caplog):
    """With no --out the files go to ./bench-results; a line as each group of workloads starts
    and one per result as it ends; a warning raised while timing comes after the table; without
    matplotlib, one line says there is no plot."""
    import warnings

    from mage_fast.bench import workloads

    def train(*args, **kwargs):
        warnings.warn("an eager fallback\nwith advice on many lines")
        return fake_results("train from images", [4, 4, 4], [2, 2, 2])
    monkeypatch.setattr(workloads, "train_workloads", train)
    monkeypatch.setattr(workloads, "class_conditional_workloads", lambda *a, **k: [])
    monkeypatch.setattr(workloads, "contrastive_workloads", lambda *a, **k: [])
    monkeypatch.setattr(workloads, "tokenize_workload", lambda *a, **k: Result("tokenize", "fast", 2, [1.0], 1e9))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.chdir(tmp_path)
    main(["bench", "--what", "train", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "training steps ...\n  train from images, reference, batch 2: 4.0 ms a step\n" in out
    assert "tokenizer ...\n  tokenize, fast, batch 2: 1.0 ms a step\n" in out
    table_end = out.index("\ntokenize ")
    assert out.index("warnings while timing the model workloads:\n  UserWarning: an eager fallback\n") > table_end
    assert "with advice" not in out
    written = sorted(p.name for p in (tmp_path / "bench-results").iterdir())
    stem = min(written, key=len).rsplit(".", 1)[0]  # cpu-<date>
    part = "-workloads-mage_vit_tiny_test"
    assert stem.startswith("cpu-") and written == sorted(stem + end for end in (".json", ".md", part + ".json",
                                                                                part + ".md"))
    assert "no plot: matplotlib is not installed" in caplog.text
    rows = strict_json((tmp_path / "bench-results" / f"{stem}.json").read_text())["sections"]
    assert [r["baseline"] for r in rows["workloads-mage_vit_tiny_test"]] == ["reference", "reference", None]


def test_kernel_scripts_write_into_the_default_folder_of_the_current_directory(tmp_path, monkeypatch, capsys):
    """The scripts run inside benchmarks/: the folder they are given is absolute."""
    import subprocess

    from mage_fast.bench.measure import device_record
    from mage_fast.bench.report import write
    from mage_fast.cli import bench
    folders, real_run = [], subprocess.run

    def run(cmd, **kwargs):
        if "--results-dir" not in cmd:  # another caller (the record's versions)
            return real_run(cmd, **kwargs)
        folder = cmd[cmd.index("--results-dir") + 1]
        folders.append(folder)
        write(folder, device_record(), {"vq": ([{"impl": "torch", "ms": 1.0}], ["impl", "ms"])}, cmd[1][6:-3])
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(bench.subprocess, "run", run)
    monkeypatch.chdir(tmp_path)
    main(["bench", "--what", "kernels", "--device", "cpu"])
    assert folders == [str(tmp_path / "bench-results")] * len(bench.KERNEL_SCRIPTS)
    merged = next((tmp_path / "bench-results").glob("cpu-*[0-9].json"))
    assert f"wrote bench-results/{merged.name}, " in capsys.readouterr().out
