"""The sampler and `mage-fast sample`: equal to the reference generate, batch-independent,
resumable after a kill with byte-identical files; editing keeps the unmasked tokens."""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import rel_err, strict_json
from mage_fast.configs import MAGE_B, MASK_ID
from mage_fast.model import build_model
from mage_fast.reference.decoding import schedule
from mage_fast.reference.vqgan import VQGAN
from mage_fast.sampling import SampleConfig, image_path, image_seed, sample
from mage_fast.sampling.sampler import Sampler, pixel_mask_to_tokens


@pytest.mark.machine
def test_sampler_equals_reference_generate(tiny):
    """Against the reference one image at a time, as the sampler computes on CPU: a batched
    forward may round otherwise (MKL picks its kernels by shape on some CPUs)."""
    seeds = [5, 6, 7]
    ids, images = Sampler(tiny, num_iter=6, choice_temperature=4.5).run(seeds)
    assert torch.equal(ids, torch.cat([tiny.generate([s], num_iter=6, choice_temperature=4.5) for s in seeds]))
    expected = torch.cat([(tiny.detokenize(ids[i:i + 1]) * 255).to(torch.uint8) for i in range(3)]).permute(0, 2, 3, 1)
    assert images.dtype == torch.uint8 and images.shape == (3, 256, 256, 3)
    assert torch.equal(images, expected)


@pytest.mark.machine
def test_images_do_not_depend_on_the_batch(tiny):
    """On CPU a property of the code, not of one machine's MKL: the sampler runs the transformer
    and the VQGAN decode one image at a time."""
    sampler = Sampler(tiny, num_iter=4)
    ids, images = sampler.run([10, 11, 12, 13])
    for part in ([11], [13, 10]):
        p_ids, p_images = sampler.run(part)
        rows = [s - 10 for s in part]
        assert torch.equal(p_ids, ids[rows]) and torch.equal(p_images, images[rows])


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="num_iter"):
        Sampler(tiny, num_iter=0)
    with pytest.raises(ValueError, match="dtype"):
        Sampler(tiny, dtype=torch.int32)
    with pytest.raises(ValueError, match="seeds"):
        Sampler(tiny).run([])


def test_edit_keeps_every_token_outside_the_mask(tiny, images):
    token_mask = torch.zeros(2, 256, dtype=torch.bool)
    token_mask[0, 40:90] = True          # inpaint a band
    token_mask[1, :16] = True            # outpaint the top row and the left column
    token_mask[1, ::16] = True
    ids, pixels = Sampler(tiny, num_iter=5).edit(images, token_mask, [1, 2])
    original = tiny.tokenize(images)
    assert torch.equal(ids[~token_mask], original[~token_mask])
    assert (ids[token_mask] != MASK_ID).all() and ids.max() < 1024
    assert not torch.equal(ids[token_mask], original[token_mask])
    assert pixels.shape == (2, 256, 256, 3)
    with pytest.raises(ValueError, match="token_mask"):
        Sampler(tiny).edit(images, token_mask.float(), [1, 2])


def test_edit_counts_the_schedule_over_the_unknown_tokens(tiny, images, monkeypatch):
    """With k tokens to regenerate, step t fixes as many as the schedule of k tokens says (the
    last step's filled ids, which the loop returns, have none left)."""
    import mage_fast.sampling.sampler
    unknown = []

    def counting_step(*args):
        ids, filled = decode_step(*args)
        last = args[3] == args[4] - 1  # step, num_iter
        unknown.append(((filled if last else ids) == MASK_ID).sum(1).tolist())
        return ids, filled
    decode_step = mage_fast.sampling.sampler.decode_step
    monkeypatch.setattr(mage_fast.sampling.sampler, "decode_step", counting_step)
    token_mask = torch.zeros(2, 256, dtype=torch.bool)
    token_mask[0, 100:150] = True
    token_mask[1, ::8] = True
    Sampler(tiny, num_iter=5).edit(images, token_mask, [3, 4])
    for row, k in enumerate(token_mask.sum(1).tolist()):
        left = [k] + [u[row] for u in unknown]
        assert [a - b for a, b in zip(left, left[1:])] == schedule(5, k)


def test_pixel_mask_to_tokens():
    mask = torch.zeros(1, 256, 256)
    mask[0, 20, 40] = 1                  # pixel row 20, column 40 -> token (1, 2)
    mask[0, 255, 255] = 1                # the last token
    tokens = pixel_mask_to_tokens(mask)
    assert tokens.shape == (1, 256) and tokens.sum() == 2
    assert tokens[0, 1 * 16 + 2] and tokens[0, 255]


# ---------------------------------------------------------------- the command
CLI = [sys.executable, "-m", "mage_fast.cli.__main__"]


def sample_cmd(out, *extra):
    return CLI + ["sample", "--model", "mage_vit_tiny_test", "--num-images", "14", "--num-iter", "3",
                  "--batch-size", "2", "--out", str(out), "--device", "cpu", *extra]


def pngs(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".png"))


@pytest.mark.machine
def test_killed_run_resumes_with_identical_files(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(sample_cmd(clean, "--npz"), check=True, capture_output=True)
    proc = subprocess.Popen(sample_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not killed.exists() or len(pngs(killed)) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(pngs(killed))
    assert 5 <= partial < 14, "the kill should land mid-run"
    leftovers = [killed / "000013.png.tmp4242", tmp_path / "killed.npz.tmp4242"]  # as a kill mid-write leaves
    for path in leftovers:
        path.write_bytes(b"half")
    subprocess.run(sample_cmd(killed, "--npz"), check=True, capture_output=True)
    assert not any(path.exists() for path in leftovers)
    assert pngs(killed) == pngs(clean) == [f"{i:06d}.png" for i in range(14)]
    assert sorted(os.listdir(killed)) == sorted(os.listdir(clean))      # no .tmp or extra files
    for name in pngs(clean):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
    arr = np.load(str(clean) + ".npz")["arr_0"]
    assert arr.shape == (14, 256, 256, 3) and arr.dtype == np.uint8
    assert all(np.array_equal(arr[i], np.asarray(Image.open(clean / f"{i:06d}.png"))) for i in range(14))
    assert np.array_equal(arr, np.load(str(killed) + ".npz")["arr_0"])


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "run"
    subprocess.run(sample_cmd(out), check=True, capture_output=True)
    recorded = strict_json((out / "manifest.json").read_text())
    assert recorded["batch_size"] == 2 and recorded["device"] == "cpu" and recorded["vqgan_ckpt"] is None
    assert set(recorded["backends"]) == {"attention", "decode_step", "mlm_loss", "token_drop", "vq_nearest"}
    proc = subprocess.run(sample_cmd(out, "--temperature", "6.0"), capture_output=True, text=True)
    assert proc.returncode != 0 and "other settings" in proc.stderr
    # A run begun by an earlier version, whose manifest lacks the newer keys, still resumes.
    older = {k: v for k, v in recorded.items() if k not in ("device", "backends")}
    (out / "manifest.json").write_text(json.dumps(older))
    (out / "000013.png").unlink()
    proc = subprocess.run(sample_cmd(out), capture_output=True, text=True)
    assert proc.returncode == 0 and "did not record backends, device" in proc.stderr and (out / "000013.png").exists()


def test_sampling_runs_from_python(tmp_path):
    """A SampleConfig and sample(), no torchrun and no ctx: image i is the sampler's image of
    seed (seed << 32) + i from the model the settings name (random weights: init seed 0); a
    second call finds nothing to do, one with other settings is refused."""
    config = SampleConfig(model="mage_vit_tiny_test", out=tmp_path / "run", num_images=3, num_iter=2, seed=5,
                          batch_size=2, device="cpu")
    assert sample(config) == 3
    assert sample(config) == 0
    sampler = Sampler(build_model("mage_vit_tiny_test").eval(), num_iter=2)
    want = torch.cat([sampler.sample([image_seed(5, i) for i in batch]) for batch in ([0, 1], [2, 3])])  # as the run
    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(image_path(config.out, i))), want[i].numpy()), i
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["seed"] == 5
    with pytest.raises(ValueError, match="other settings.*temperature"):
        sample(dataclasses.replace(config, temperature=6.0))


@pytest.mark.parametrize("change, message", [
    (dict(num_iter=0), "num_iter must be an integer >= 1, got 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0, got nan"),
    (dict(seed=2**31), "seed must be an integer in [0, 2147483648)"),
    (dict(batch_size="big"), "batch_size must be 'auto' or an integer >= 1, got 'big'"),
    (dict(batch_size=0), "batch_size must be 'auto' or an integer >= 1, got 0"),
    (dict(dtype="float32"), "dtype must be one of bf16, fp16, fp32"),
    (dict(impl="triton"), "impl must be one of fast, reference"),
    (dict(npz="yes"), "npz must be a bool"),
])
def test_sample_config_refuses_bad_settings_naming_the_field(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SampleConfig(out="out", **change)


@pytest.mark.parametrize("command, flag", [("sample", "--num-images=0"), ("sample", "--temperature=-1"),
                                           ("sample", "--num-iter=0"), ("sample", "--seed=-1"),
                                           ("sample", "--batch-size=0"), ("edit", "--num-iter=0"),
                                           ("edit", "--temperature=nan"), ("edit", "--temperature=inf")])
def test_bad_numbers_are_refused_before_any_work(command, flag, tmp_path, capsys):
    from mage_fast.cli import main
    required = {"sample": ["--out", str(tmp_path)], "edit": ["--image", "in.png", "--mask", "m.png", "--out", "o.png"]}
    with pytest.raises(SystemExit) as e:
        main([command, flag, *required[command]])
    assert e.value.code == 2 and flag.split("=")[0] in capsys.readouterr().err


def test_fid_names_the_missing_inception_weights(tmp_path, monkeypatch):
    """Offline without --inception-weights: the download fails, and the error says what to pass."""
    import types
    import urllib.error

    from mage_fast.cli import main

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    fake = types.SimpleNamespace(utils=types.SimpleNamespace(create_feature_extractor=offline), metric_fid=None)
    monkeypatch.setitem(sys.modules, "torch_fidelity", fake)
    with pytest.raises(SystemExit, match="Inception weights .*name resolution.*--inception-weights PATH"):
        main(["fid", "--gen", str(tmp_path), "--ref", str(tmp_path)])
    with pytest.raises(SystemExit, match="--inception-weights file not found"):
        main(["fid", "--gen", str(tmp_path), "--ref", str(tmp_path), "--inception-weights", str(tmp_path / "none.pth")])


def test_fid_names_the_missing_package(tmp_path, monkeypatch):
    from mage_fast.cli import main
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)   # import fails as if not installed
    with pytest.raises(SystemExit, match="pip install torch-fidelity"):
        main(["fid", "--gen", str(tmp_path), "--ref", str(tmp_path)])


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_graph_replay_equals_eager():
    from mage_fast.reference import mage_vit_tiny_test
    torch.manual_seed(0)
    model = mage_vit_tiny_test().cuda().eval()
    seeds = list(range(100, 116))
    for dtype in (torch.float32, torch.bfloat16):
        graphed = Sampler(model, num_iter=6, dtype=dtype).run(seeds)
        eager = Sampler(model, num_iter=6, dtype=dtype, cuda_graphs=False).run(seeds)
        assert torch.equal(graphed[0], eager[0]) and torch.equal(graphed[1], eager[1])
        again = Sampler(model, num_iter=6, dtype=dtype).run(seeds)   # a second replay of a new graph
        assert torch.equal(graphed[0], again[0])


@pytest.mark.gpu
def test_max_batch_fits():
    from mage_fast.reference import mage_vit_tiny_test
    from mage_fast.sampling.sampler import max_batch
    model = mage_vit_tiny_test().cuda().eval()
    sampler = Sampler(model, num_iter=2)
    batch = max_batch(sampler, limit=256)
    assert 8 <= batch <= 256
    assert sampler.sample(list(range(batch))).shape == (batch, 256, 256, 3)


class _GraphsUpTo:
    """A sampler whose graph capture runs out of memory above `fits` images."""
    def __init__(self, fits, use_graphs=True):
        self.fits, self.use_graphs, self.tried, self.cleared, self._graphs = fits, use_graphs, [], 0, {}

    def _graph(self, batch):
        self.tried.append(batch)
        if batch > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory")
        self._graphs[batch] = "graph"

    def clear_graphs(self):
        self._graphs.clear()
        self.cleared += 1


def test_max_batch_backs_off_on_out_of_memory():
    from mage_fast.sampling.sampler import _largest_that_captures
    sampler = _GraphsUpTo(fits=700)
    assert _largest_that_captures(sampler, 1000) == 648 and sampler.tried == [1000, 896, 800, 720, 648]
    assert sampler.cleared == 4 and sampler._graphs == {648: "graph"}  # kept for replay
    eager = _GraphsUpTo(fits=5, use_graphs=False)
    assert _largest_that_captures(eager, 16) == 4 and eager.tried == [16, 8, 4] and eager._graphs == {}
    with pytest.raises(RuntimeError, match="not even one image"):
        _largest_that_captures(_GraphsUpTo(fits=0), 8)


def test_benchmark_script_runs():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "bench_sampler.py", "--smoke", "--repeats", "1"],
                          cwd=os.path.join(root, "benchmarks"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fast sampler" in proc.stdout and "official" in proc.stdout and "sampler (channels_last)" in proc.stdout


def test_edit_command_inpaints_under_the_mask(tmp_path):
    from mage_fast.cli import main
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 256, 3), dtype=np.uint8)          # cropped to the middle 256 rows
    mask = np.zeros((300, 256), dtype=np.uint8)
    mask[100:140, 60:100] = 255                                           # rows 78..117 after the crop
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    main(["edit", "--model", "mage_vit_tiny_test", "--image", str(tmp_path / "in.png"), "--mask",
          str(tmp_path / "mask.png"), "--out", str(out), "--num-iter", "3", "--device", "cpu", "--paste-original"])
    edited = np.asarray(Image.open(out))
    assert edited.shape == (256, 256, 3)
    cropped = image[22:278]
    rows = np.zeros(256, dtype=bool)
    rows[64:128] = True                                                   # token rows 4..7 cover 78..117
    cols = np.zeros(256, dtype=bool)
    cols[48:112] = True                                                   # token cols 3..6 cover 60..99
    inside = rows[:, None] & cols[None, :]
    assert np.array_equal(edited[~inside], cropped[~inside])
    assert not np.array_equal(edited[inside], cropped[inside])
    with pytest.raises(SystemExit, match="same size|image's size"):
        Image.fromarray(mask[:200]).save(tmp_path / "small.png")
        main(["edit", "--model", "mage_vit_tiny_test", "--image", str(tmp_path / "in.png"), "--mask",
              str(tmp_path / "small.png"), "--out", str(out), "--device", "cpu"])


@pytest.mark.machine
@pytest.mark.gpu
def test_vqgan_decode_at_a_large_batch_matches_a_small_one():
    """At the batches max_batch picks (hundreds), the full-resolution activations of MAGE-B's
    decoder pass 2^31 elements: a 32-bit indexing bug in a kernel would give wrong pixels there
    only, silently. The sampler's decode (bf16, channels_last) of the last images of a batch of
    320 must match that of those images alone."""
    torch.manual_seed(0)
    vqgan = VQGAN(MAGE_B.vqgan).cuda().eval()
    ids = torch.randint(0, MAGE_B.vqgan.codebook_size, (320, 256), device="cuda")
    z = vqgan.quantize.lookup(ids).contiguous(memory_format=torch.channels_last)
    assert z.shape[0] * 128 * 256 * 256 > 2**31  # the decoder's widest full-resolution activation
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        big = vqgan.decoder(z)[-4:].float()
        small = vqgan.decoder(z[-4:]).float()
    assert small.abs().mean() > 0 and rel_err(big, small) < 3e-2
