"""Token caches (`mage-fast tokenize`) and training from them (`mage-fast train --tokens`): the
cached ids are those of each view's crop, training from them is training from those crops,
resumes are exact, a killed tokenize resumes, and what does not fit is refused.

Every exact equality here compares two runs of the same functions on the same inputs, at the
same shapes, in one process or in processes with the same thread count (one: the whole module
runs single-threaded, as the command runs under OMP_NUM_THREADS=1). None relies on two
different computations rounding alike, so none depends on the CPU or its BLAS."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import crashing_after, env_without_interpreter, torch_threads
from mage_fast import model as fast_model
from mage_fast.checkpoint import load_checkpoint
from mage_fast.cli import main
from mage_fast.data import EvalTransform, ImageFolder, TrainTransform
from mage_fast.model import build_model
from mage_fast.training import TokenBatches, TokenCache, TrainSamples, tokenize_folder, tokenizer_sha256
from mage_fast.training import tokenize as tokenize_module
from mage_fast.training.batches import VIEW_CROP, generator, noise_of, view_generator, views_of_epoch
from test_training import assert_same_state, load, logged

TINY = ["--model", "mage_vit_tiny_test", "--device", "cpu"]
N, K = 3, 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as in the commands these tests start (OMP_NUM_THREADS=1)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """N random 48x64 images (not square: crops differ in shape) in two classes."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    for i in range(N):
        (root / "ab"[i // 2]).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "ab"[i // 2] / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vqgan_ckpt(tmp_path_factory):
    """A tokenizer checkpoint (the VQGAN's state_dict, as vqgan_jax_strongaug.ckpt holds it) with a
    spread-out codebook, so that crops get varied ids."""
    torch.manual_seed(1234)
    model = fast_model.mage_vit_tiny_test()
    with torch.no_grad():
        model.vqgan.quantize.embedding.weight.normal_()
    path = tmp_path_factory.mktemp("ckpt") / "vqgan.ckpt"
    torch.save({"state_dict": model.vqgan.state_dict()}, path)
    return str(path)


def tokenizer(vqgan_ckpt):
    model = build_model("mage_vit_tiny_test")
    load_checkpoint(model, vqgan_ckpt=vqgan_ckpt)
    return model.eval()


def tokenize_args(folder, out, vqgan_ckpt):
    return ["tokenize", "--data", str(folder), "--out", str(out), "--views", str(K), "--vqgan-ckpt", vqgan_ckpt,
            "--chunk-size", "1", *TINY]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, folder, vqgan_ckpt):
    out = tmp_path_factory.mktemp("cache") / "cache"
    main(tokenize_args(folder, out, vqgan_ckpt))
    return out


def train(out, *extra):
    with torch.random.fork_rng():  # the run reseeds the process RNG
        main(["train", "--out", str(out), *TINY, "--workers", "0", "--log-every", "1", *extra])


def copy_of(cache, tmp_path):
    shutil.copytree(cache, tmp_path / "copy")
    return tmp_path / "copy"


# ---------------------------------------------------------------- the cache
@pytest.mark.machine
def test_cached_ids_are_the_tokens_of_each_views_crop(cache, folder, vqgan_ckpt):
    """View v of image i: the training crop and flip drawn from (seed, i, v), tokenized alone."""
    c = TokenCache(str(cache))
    images = ImageFolder(str(folder))
    assert c.tokens.shape == (N, K, 256) and c.tokens.dtype == np.uint16
    assert c.index["files"] == images.files and c.index["labels"] == [0, 0, 1] and c.index["classes"] == ["a", "b"]
    assert c.index["seed"] == 0 and c.index["transform"] == {   # as caches made before --augment record it
        "kind": "random_resized_crop_flip", "size": 256, "scale": [0.2, 1.0], "ratio": [0.75, 4 / 3],
        "interpolation": "bilinear"}
    assert c.index["augment"] == c.augment == "mage"
    model = tokenizer(vqgan_ckpt)
    assert c.index["tokenizer_sha256"] == tokenizer_sha256(model)
    for i in range(N):
        img = images.load(i)
        for v in range(K):
            crop = TrainTransform()(img, generator=generator(0, VIEW_CROP, i, v))
            assert torch.equal(torch.from_numpy(c.tokens[i, v].astype(np.int64)), model.tokenize(crop[None])[0]), (i, v)
    assert len({c.tokens[i, v].tobytes() for i in range(N) for v in range(K)}) == N * K   # every view its own ids
    assert not os.path.exists(f"{cache}.partial") and sorted(os.listdir(cache)) == ["index.json", "tokens.npy"]


def test_center_crop_cache_for_evaluation_sets(folder, vqgan_ckpt, tmp_path):
    out = tmp_path / "val"
    main(["tokenize", "--data", str(folder), "--out", str(out), "--center-crop", "--vqgan-ckpt", vqgan_ckpt, *TINY])
    c = TokenCache(str(out))
    assert c.tokens.shape == (N, 1, 256) and c.index["transform"] == {
        "kind": "center_crop", "size": 256, "resize": 256, "interpolation": "bicubic"} and c.index["augment"] is None
    crop = EvalTransform()(ImageFolder(str(folder)).load(2))
    assert torch.equal(torch.from_numpy(c.tokens[2, 0].astype(np.int64)), tokenizer(vqgan_ckpt).tokenize(crop[None])[0])


def test_batches_read_whole_micro_batches_in_order(cache):
    """One memmap read per micro-batch, rows back in the batch's order; the view of an image is
    a function of (seed, epoch, image); the noise is the images path's."""
    c = TokenCache(str(cache))
    batches = TokenBatches(c, seed=5)
    keys = [(1, 2, 9, 0), (1, 0, 9, 1), (1, 1, 9, 2)]
    ids, noise = batches[keys]
    views = views_of_epoch(5, 1, N, K)
    assert ids.dtype == torch.int16 and ids.shape == (3, 256)
    for row, (_, i, micro, r) in enumerate(keys):
        assert np.array_equal(ids[row].numpy(), c.tokens[i, views[i]].astype(np.int16))
        assert torch.equal(noise[row], noise_of(5, micro, r))
    many = views_of_epoch(5, 1, 100, K)
    assert set(many.tolist()) == {0, 1} and all((views_of_epoch(5, e, 100, K) != many).any() for e in (0, 2))
    with pytest.raises(ValueError, match="two epochs"):
        batches[[(0, 0, 0, 0), (1, 1, 0, 1)]]
    loader = torch.utils.data.DataLoader(batches, sampler=[keys], batch_size=None, num_workers=1)
    (from_worker, noise_from_worker), = list(loader)  # a worker maps the file itself
    assert torch.equal(from_worker, ids) and torch.equal(noise_from_worker, noise)


# ---------------------------------------------------------------- training from the cache
@pytest.mark.machine
def test_training_from_the_cache_equals_training_from_images_cropped_as_its_views(
        cache, folder, vqgan_ckpt, tmp_path, monkeypatch):
    """`train --tokens` against `train --data` where each image's crop in an epoch is the view the
    cache run trains on. The images run tokenizes each crop alone, in a fresh tensor, as
    `tokenize` does, so both runs hold ids from the same function on the same input: equal on
    any machine. From there both take the same steps (masks, noise and dropout are functions
    of seed and counters): the same losses and weights, bit for bit, dropout on."""
    common = ["--batch-size", "2", "--epochs", "2", "--warmup-epochs", "0", "--lr", "1e-3", "--keep-every", "0",
              "--vqgan-ckpt", vqgan_ckpt]
    train(tmp_path / "tokens", "--tokens", str(cache), *common)

    def crop_as_the_cached_view(self, epoch, index):
        return view_generator(0, index, int(views_of_epoch(self.seed, epoch, N, K)[index]))
    tokenize = fast_model.MAGE._tokenize
    monkeypatch.setattr(TrainSamples, "crop", crop_as_the_cached_view)
    monkeypatch.setattr(fast_model.MAGE, "_tokenize",
                        lambda self, x: torch.cat([tokenize(self, x[i:i + 1].clone()) for i in range(len(x))]))
    train(tmp_path / "images", "--data", str(folder), *common)

    assert (views_of_epoch(0, 0, N, K) != views_of_epoch(0, 1, N, K)).any()   # the epochs train on other views
    assert logged(tmp_path / "tokens", "loss") == logged(tmp_path / "images", "loss")
    tokens, images = (load(tmp_path / d / "checkpoint-last.pth") for d in ("tokens", "images"))
    assert tokens["train_state"].pop("token_cache") == TokenCache(str(cache)).settings
    assert_same_state(tokens, images)
    assert tokens["args"].tokens == str(cache) and tokens["args"].data is None


@pytest.mark.machine
def test_resume_from_the_cache_is_exact_and_keeps_its_cache(cache, folder, vqgan_ckpt, tmp_path):
    common = ["--tokens", str(cache), "--batch-size", "1", "--accum-iter", "2", "--epochs", "3",
              "--warmup-epochs", "1", "--vqgan-ckpt", vqgan_ckpt]
    train(tmp_path / "full", *common)
    train(tmp_path / "parts", *common, "--max-steps", "2")
    train(tmp_path / "parts", *common)
    full, parts = (load(tmp_path / d / "checkpoint-last.pth") for d in ("full", "parts"))
    assert full["train_state"]["step"] == 3
    assert_same_state(full, parts)
    assert logged(tmp_path / "full", "loss") == logged(tmp_path / "parts", "loss")

    last = str(tmp_path / "full" / "checkpoint-last.pth")
    other = copy_of(cache, tmp_path)   # the same images in other views
    index = json.loads((other / "index.json").read_text())
    (other / "index.json").write_text(json.dumps({**index, "seed": 1}))
    with pytest.raises(SystemExit, match="other data-order settings.*token_cache"):
        train(tmp_path / "x", *common[2:], "--tokens", str(other), "--resume", last)
    with pytest.raises(SystemExit, match="other data-order settings.*token_cache"):
        train(tmp_path / "x", *common[2:], "--data", str(folder), "--resume", last)


def test_training_refuses_a_cache_of_other_tokenizer_weights(cache, vqgan_ckpt, tmp_path):
    ours = TokenCache(str(cache)).index["tokenizer_sha256"]
    with pytest.raises(SystemExit) as e:   # no checkpoint: the random tokenizer of --seed 0
        train(tmp_path / "out", "--tokens", str(cache), "--batch-size", "1")
    message = str(e.value)
    assert "other tokenizer weights" in message and ours in message and "random weights (--seed 0)" in message
    assert f"--vqgan-ckpt {os.path.abspath(vqgan_ckpt)}" in message


# ---------------------------------------------------------------- a killed tokenize
@pytest.mark.machine
def test_killed_tokenize_resumes_and_writes_the_same_cache(cache, folder, vqgan_ckpt, tmp_path, caplog):
    """Killed after its first chunk, then started again (here in this process, also on one
    thread): the chunks it finished are kept and the cache is the uninterrupted run's, bytes
    and all."""
    out, partial = tmp_path / "cache", tmp_path / "cache.partial"
    cmd = [sys.executable, "-m", "mage_fast.cli", *tokenize_args(folder, out, vqgan_ckpt)]
    env = {**env_without_interpreter(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(partial.glob("chunk_*.npy")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(partial.glob("chunk_*.npy")))
    assert 1 <= done < N and not out.exists()

    with caplog.at_level("INFO", logger="mage_fast"):
        main(tokenize_args(folder, out, vqgan_ckpt))
    assert f"resuming: {done} of {N} chunks already done" in caplog.text
    for name in ("tokens.npy", "index.json"):
        assert (out / name).read_bytes() == (cache / name).read_bytes(), name
    assert not partial.exists()


@pytest.mark.machine
def test_two_process_gloo_tokenize_writes_the_one_process_cache(cache, folder, vqgan_ckpt, tmp_path):
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mage_fast.cli", *tokenize_args(folder, out, vqgan_ckpt)]
    run = subprocess.run(cmd, env={**env_without_interpreter(), "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es)" in run.stderr
    for name in ("tokens.npy", "index.json"):
        assert (out / name).read_bytes() == (cache / name).read_bytes(), name


def test_tokenize_keeps_finished_chunks_after_a_crash(folder, tmp_path, monkeypatch):
    images = ImageFolder(str(folder)).shard(0, 2)   # two images: two chunks of one
    model = build_model("mage_vit_tiny_test").eval()
    out, partial = tmp_path / "c", tmp_path / "c.partial"
    monkeypatch.setattr(tokenize_module, "tokenize_crops", crashing_after(tokenize_module.tokenize_crops, 1))
    with pytest.raises(RuntimeError, match="crash"):
        tokenize_folder(model, images, str(out), views=1, chunk_size=1)
    monkeypatch.undo()
    chunk0 = partial / "chunk_000000.npy"
    assert sorted(p.name for p in partial.glob("chunk_*")) == [chunk0.name] and not out.exists()
    # Marked ids come through only if the rerun keeps the chunk instead of computing it again.
    marked = (np.load(chunk0) + 1) % 1024
    np.save(chunk0, marked)
    c = tokenize_folder(model, images, str(out), views=1, chunk_size=1)
    assert np.array_equal(c.tokens[:1], marked)
    crop = TrainTransform()(images.load(1), generator=view_generator(0, 1, 0))
    assert torch.equal(torch.from_numpy(c.tokens[1, 0].astype(np.int64)), model.tokenize(crop[None])[0])
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        tokenize_folder(model, images, str(out), views=1)


# ---------------------------------------------------------------- refusals
def rewrite_index(path, **changes):
    index = json.loads((path / "index.json").read_text())
    (path / "index.json").write_text(json.dumps({**index, **changes}))


@pytest.mark.parametrize("damage, message", [
    (lambda p: np.save(p / "tokens.npy", np.zeros((N, K + 1, 256), np.uint16)),
     r"its index describes uint16 \[3, 2, 256\], but tokens.npy holds uint16 \[3, 3, 256\]"),
    (lambda p: np.save(p / "tokens.npy", np.zeros((N, K, 256), np.int32)), "holds int32"),
    (lambda p: rewrite_index(p, num_images=N - 1), "lists 3 files and 3 labels for 2 images"),
    (lambda p: rewrite_index(p, files=["x.png"] * N), "file list does not match its sha1"),
    (lambda p: rewrite_index(p, version=99), "format version 99"),
    (lambda p: (p / "index.json").write_text("{"), "not JSON"),
    (lambda p: os.remove(p / "tokens.npy"), "no tokens.npy"),
    (lambda p: os.truncate(p / "tokens.npy", 1000), "tokens.npy"),
])
def test_a_cache_whose_index_does_not_match_its_array_is_refused(cache, tmp_path, damage, message):
    damaged = copy_of(cache, tmp_path)
    damage(damaged)
    with pytest.raises(ValueError, match=message):
        TokenCache(str(damaged))


def test_damaged_ids_and_missing_caches_are_clear_errors(cache, tmp_path):
    damaged = copy_of(cache, tmp_path)
    array = np.load(damaged / "tokens.npy", mmap_mode="r+")
    array[1, 1, 7] = 1024
    array.flush()
    del array
    with pytest.raises(ValueError, match=r"rows \[3\] of tokens.npy hold ids beyond the codebook"):
        TokenCache(str(damaged)).read(np.array([2, 1]), np.array([0, 1]))
    with pytest.raises(FileNotFoundError, match="token cache not found"):
        TokenCache(str(tmp_path / "none"))
    with pytest.raises(SystemExit, match="not a usable token cache.*no index.json"):
        train(tmp_path / "out", "--tokens", str(tmp_path))


@pytest.mark.parametrize("extra, message", [
    (["--views", "2", "--center-crop"], "one view per image"),
    ([], "give --views K"),
    (["--views", "1"], "exists; pass --overwrite"),
])
def test_tokenize_refuses_bad_arguments(folder, tmp_path, extra, message):
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit, match=message):
        main(["tokenize", "--data", str(folder), "--out", str(tmp_path / "out"), *TINY, *extra])


def test_train_takes_images_or_tokens_not_both(folder, cache, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train(tmp_path / "out", "--data", str(folder), "--tokens", str(cache))
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["tokenize", "--help"])
    assert e.value.code == 0 and "torchrun" in capsys.readouterr().out


def test_tokenize_reads_the_tokenizer_from_a_mage_checkpoint(vqgan_ckpt, tmp_path):
    """--ckpt: only its vqgan.* tensors are read; one without them is a clear error."""
    from mage_fast.cli.tokenize import _load_tokenizer
    source = tokenizer(vqgan_ckpt)
    torch.save({"model": source.state_dict()}, tmp_path / "mage.pth")
    model = build_model("mage_vit_tiny_test", init_seed=1)
    assert _load_tokenizer(model, str(tmp_path / "mage.pth"), None, 0) == f"--ckpt {tmp_path / 'mage.pth'}"
    assert tokenizer_sha256(model) == tokenizer_sha256(source)
    torch.save({"model": {k: v for k, v in source.state_dict().items() if not k.startswith("vqgan.")}},
               tmp_path / "mage-c.pth")
    with pytest.raises(ValueError, match="lacks the tokenizer.*--vqgan-ckpt"):
        _load_tokenizer(model, str(tmp_path / "mage-c.pth"), None, 0)
