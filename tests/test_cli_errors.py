"""What the command line does with bad input: one line `mage-fast CMD: message` and exit 1 for
an error met while running, exit 2 (argparse's usage error) for a bad flag, 130 for Ctrl-C, and
never a traceback; the model size read off the checkpoint or cache; the files a command leaves
(or does not) when it refuses. All in-process, on the tiny model, without training anything."""
import argparse
import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from mage_fast.checkpoint import model_of_file
from mage_fast.cli import main, one_line
from mage_fast.cli.common import ModelDefault, resolve_model
from mage_fast.configs import MAGE_B
from mage_fast.model import build_model
from mage_fast.recognition import FeatureSet, save_features
from mage_fast.training.token_cache import TokenCache

TINY = ["--model", "mage_vit_tiny_test"]
CUDA = torch.cuda.is_available()


def fails(argv, code=None):
    """Run `mage-fast argv`; its exit message (a str: exit status 1) or status, which must be one line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    if code is not None:
        assert e.value.code == code
    message = e.value.code
    if isinstance(message, str):
        assert message.startswith(f"mage-fast {argv[0]}: ") and "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An image folder of 2 classes x 2 images, a PNG, an .npz, the tiny model's checkpoint, its
    class-conditional one, and feature files pooled avg and cls."""
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    for c in "ab":
        (root / "data" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "data" / c / f"{i}.png")
    shutil.copy(root / "data" / "a" / "0.png", root / "image.png")
    np.savez(root / "arrays.npz", x=np.zeros(3))
    torch.save({"model": build_model("mage_vit_tiny_test").state_dict()}, root / "tiny.pth")
    torch.save({"model": build_model("mage_vit_tiny_test", class_conditional=True, num_classes=2).state_dict()},
               root / "cc.pth")
    for pool in ("avg", "cls"):
        save_features(str(root / f"{pool}.npz"), FeatureSet(
            rng.standard_normal((4, 8)).astype(np.float32), np.array([0, 0, 1, 1]), [f"{i}.png" for i in range(4)],
            ["a", "b"], {"model": "mage_vit_tiny_test", "pool": pool}))
    return root


def commands(root):
    """Each command, with its required arguments valid (files that exist)."""
    feats = ["--train", str(root / "avg.npz"), "--val", str(root / "avg.npz")]
    return {
        "sample": ["--out", str(root / "s"), "--num-images", "1", *TINY],
        "edit": ["--image", str(root / "image.png"), "--mask", str(root / "image.png"), "--out", str(root / "e.png"),
                 *TINY],
        "fid": ["--gen", str(root / "data"), "--ref", str(root / "data")],
        "features": ["--data", str(root / "data"), "--out", str(root / "f.npz"), *TINY],
        "linprobe": feats,
        "fewshot": feats,
        "tokenize": ["--data", str(root / "data"), "--out", str(root / "t"), "--center-crop", *TINY],
        "evaluate": ["--ckpt", str(root / "tiny.pth"), "--data", str(root / "data")],
        "train": ["--data", str(root / "data"), "--out", str(root / "t-out"), *TINY],
        "bench": ["--model", "mage_vit_tiny_test"],
        "finetune": ["--data", str(root / "data"), "--val", str(root / "data"), "--out", str(root / "f-out"),
                     "--ckpt", str(root / "tiny.pth"), *TINY, "--mixup", "0", "--cutmix", "0", "--aa", "none"],
    }


# ---------------------------------------------------------------- the device check, one for all
@pytest.mark.parametrize("command", ["sample", "edit", "fid", "features", "linprobe", "fewshot", "tokenize",
                                     "evaluate", "train", "finetune", "bench"])
@pytest.mark.parametrize("name, says", [("banana", "device must be cpu, cuda or cuda:N, got 'banana'"),
                                        ("gpu", "device must be cpu"), ("cuda:x", "device must be cpu"),
                                        ("cuda", "cuda asked for, but this torch sees no CUDA device")])
def test_every_command_refuses_an_unknown_or_absent_device(files, command, name, says, capsys):
    if name == "cuda" and CUDA:
        pytest.skip("this machine has CUDA")
    assert fails([command, *commands(files)[command], "--device", name], code=2) == 2
    err = capsys.readouterr().err
    assert f"argument --device: {says}" in err and "Traceback" not in err


# ---------------------------------------------------------------- errors as one line
def given(argv, flag, value):
    """argv with `flag` set to `value` (replaced where argv has it)."""
    if flag in argv:
        return argv[:argv.index(flag) + 1] + [value] + argv[argv.index(flag) + 2:]
    return argv + [flag, value]


@pytest.mark.parametrize("command, flag, says", [
    ("sample", "--ckpt", "checkpoint not found"),
    ("edit", "--image", "cannot read"),
    ("features", "--data", "not found"),
    ("linprobe", "--train", "feature file not found"),
    ("fewshot", "--val", "feature file not found"),
    ("tokenize", "--data", "not found"),
    ("evaluate", "--ckpt", "checkpoint not found"),
])
def test_a_missing_file_is_one_line_and_exit_1(files, command, flag, says):
    missing = str(files / ("missing.npz" if command in ("linprobe", "fewshot") else "missing"))
    assert says in fails([command, *given(commands(files)[command], flag, missing), "--device", "cpu"])


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_train_and_finetune_refuse_a_missing_folder_in_one_line(files, command):
    assert "not found" in fails([command, *given(commands(files)[command], "--data", str(files / "missing"))])


@pytest.mark.parametrize("command, flag", [("sample", "--num-images"), ("edit", "--num-iter"), ("fid", "--batch-size"),
                                           ("features", "--batch-size"), ("linprobe", "--epochs"),
                                           ("fewshot", "--seeds"), ("tokenize", "--views"),
                                           ("evaluate", "--workers")])
def test_a_bad_number_is_a_usage_error(files, command, flag, capsys):
    fails([command, *commands(files)[command], flag, "-1"], code=2)
    assert f"argument {flag}: must be" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sample", "edit", "features", "tokenize", "evaluate"])
@pytest.mark.parametrize("wrong", ["image.png", "arrays.npz"])
def test_an_image_or_npz_as_checkpoint_is_one_line(files, command, wrong):
    argv = given(commands(files)[command], "--ckpt", str(files / wrong))
    assert f"{files / wrong} is not a PyTorch checkpoint" in fails([command, *argv, "--device", "cpu"])


def test_a_checkpoint_of_another_size_names_the_model_to_choose(files):
    """A MAGE-B checkpoint (its embedding and 12 blocks, nothing else needed to tell) loaded as the tiny model."""
    state = {"token_emb.word_embeddings.weight": torch.zeros(2025, MAGE_B.embed_dim),
             **{f"blocks.{i}.norm1.weight": torch.zeros(MAGE_B.embed_dim) for i in range(MAGE_B.depth)}}
    torch.save({"model": state}, files / "base.pth")
    assert model_of_file(str(files / "base.pth")) == "mage_vit_base_patch16"
    message = fails(["sample", *commands(files)["sample"], "--ckpt", str(files / "base.pth"), "--device", "cpu"])
    assert message.endswith("the checkpoint is a mage_vit_base_patch16, the model a mage_vit_tiny_test: "
                            "choose --model mage_vit_base_patch16")
    assert len(message) < 200


def test_a_fine_tuned_classifier_given_to_sample_says_evaluate_takes_it(files):
    state = build_model("mage_vit_tiny_test").state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("decoder")}
    state["head.weight"] = torch.zeros(2, 128)
    torch.save({"model": state}, files / "classifier.pth")
    message = fails(["sample", *commands(files)["sample"], "--ckpt", str(files / "classifier.pth"), "--device", "cpu"])
    assert "fine-tuned classifier" in message and "mage-fast evaluate" in message


def test_edit_with_a_class_conditional_checkpoint_is_one_line(files):
    message = fails(["edit", *commands(files)["edit"], "--ckpt", str(files / "cc.pth"), "--device", "cpu"])
    assert "is class-conditional" in message


def test_the_model_size_is_read_off_the_checkpoint(files):
    """No --model: the tiny checkpoint's size; --model given: that one, which loading then checks."""
    def model_for(*argv):
        args = argparse.Namespace(model=ModelDefault("mage_vit_base_patch16"), ckpt=None)
        args.__dict__.update(dict(zip(argv[::2], argv[1::2])))
        resolve_model(args)
        return args.model
    assert model_for("ckpt", str(files / "tiny.pth")) == "mage_vit_tiny_test"
    assert model_for("ckpt", str(files / "image.png")) == "mage_vit_base_patch16"   # the load reports it
    assert model_for("ckpt", str(files / "tiny.pth"), "model", "mage_vit_large_patch16") == "mage_vit_large_patch16"
    assert type(model_for()) is str
    run = files / "run"   # train resuming OUT's last checkpoint (--resume auto) takes its size
    run.mkdir(exist_ok=True)
    shutil.copy(files / "tiny.pth", run / "checkpoint-last.pth")
    assert model_for("out", str(run), "resume", "auto") == "mage_vit_tiny_test"
    assert model_for("out", str(run), "resume", "none") == "mage_vit_base_patch16"


def test_interrupt_is_exit_130_and_one_line(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr("mage_fast.cli.info.collect", interrupted)
    assert fails(["info"], code=130) == 130
    assert capsys.readouterr().err == "mage-fast info: interrupted\n"


def test_verbose_shows_the_traceback(files, capsys):
    with pytest.raises(SystemExit, match="^mage-fast linprobe: feature file not found"):
        main(["-v", "linprobe", "--train", str(files / "none.npz"), "--val", str(files / "avg.npz")])
    assert "Traceback" in capsys.readouterr().err


def test_an_error_in_a_data_loader_worker_is_its_own_message():
    """torch re-raises a worker's error with the worker's traceback in its message."""
    from torch._utils import ExceptionWrapper
    try:
        raise ValueError("cache: rows [3] of tokens.npy hold ids beyond the codebook (1024)")
    except ValueError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ValueError) as e:
        wrapped.reraise()
    assert "Original Traceback" in str(e.value)
    assert one_line(e.value) == "cache: rows [3] of tokens.npy hold ids beyond the codebook (1024)"


def test_a_long_message_is_cut_and_verbose_shows_it_all():
    """torch's own key-mismatch messages run to tens of KB."""
    message = one_line(RuntimeError("size mismatch for blocks.0.attn.qkv.weight\n" * 500))
    assert len(message) < 500 and message.endswith("(mage-fast -v shows it all)")


# ---------------------------------------------------------------- files
def test_sample_refuses_an_out_that_is_a_file(files):
    assert "is a file" in fails(["sample", *commands(files)["sample"], "--out", str(files / "image.png")])


def test_sample_with_a_missing_checkpoint_leaves_no_folder(files):
    out = files / "never"
    fails(["sample", *commands(files)["sample"], "--out", str(out), "--ckpt", str(files / "missing.pth")])
    assert not out.exists()


def test_edit_checks_the_output_before_computing(files, monkeypatch):
    def no_compute(*args, **kwargs):
        raise AssertionError("the model was built")
    monkeypatch.setattr("mage_fast.model_settings.ModelSettings.load", no_compute)
    argv = commands(files)["edit"]
    assert "the folder of --out does not exist" in fails(["edit", *argv, "--out", str(files / "no" / "e.png")])
    assert "name an image format" in fails(["edit", *argv, "--out", str(files / "e.xyz")])


def test_edit_writes_the_format_its_extension_names(files):
    out = files / "edited.jpg"
    main(["edit", *commands(files)["edit"], "--out", str(out), "--num-iter", "1", "--device", "cpu"])
    with Image.open(out) as img:
        assert img.format == "JPEG" and img.size == (256, 256)


def test_fid_names_torchvision_when_it_is_what_is_missing(files, tmp_path, monkeypatch):
    """A torch-fidelity that is installed but cannot import torchvision."""
    (tmp_path / "torch_fidelity").mkdir()
    (tmp_path / "torch_fidelity" / "__init__.py").write_text("import torchvision\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_fidelity", raising=False)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    message = fails(["fid", *commands(files)["fid"]])
    assert message.startswith("mage-fast fid: torchvision is not installed")


def test_fewshot_and_linprobe_refuse_features_of_different_pooling(files):
    for command in ("fewshot", "linprobe"):
        message = fails([command, "--train", str(files / "avg.npz"), "--val", str(files / "cls.npz")])
        assert "--pool avg, val features with --pool cls" in message


def test_evaluate_writes_its_json_beside_the_checkpoint(files, monkeypatch):
    seen = {}

    def evaluate_checkpoint(ckpt, data, out, **kwargs):
        seen["out"] = out
    monkeypatch.setattr("mage_fast.finetune.evaluate_checkpoint", evaluate_checkpoint)
    monkeypatch.chdir(files / "data")
    main(["evaluate", "--ckpt", str(files / "tiny.pth"), "--data", str(files / "data"), "--device", "cpu"])
    assert seen["out"] == str(files / "tiny-eval.json")


# ---------------------------------------------------------------- token caches
@pytest.fixture(scope="module")
def cache(files):
    out = files / "cache"
    main(["tokenize", "--data", str(files / "data" / "a"), "--out", str(out), "--center-crop", *TINY,
          "--device", "cpu"])
    return out


def damaged(cache, tmp_path, damage):
    copy = tmp_path / "damaged"
    shutil.copytree(cache, copy)
    damage(copy)
    return str(copy)


def drop_from_index(*keys):
    def damage(path):
        index = json.loads((path / "index.json").read_text())
        (path / "index.json").write_text(json.dumps({k: v for k, v in index.items() if k not in keys}))
    return damage


@pytest.mark.parametrize("damage, says", [
    (lambda p: (p / "tokens.npy").write_bytes(b""), "tokens.npy: No data left in file"),
    (drop_from_index("labels"), "index.json lacks labels"),
    (drop_from_index("files_sha1", "classes"), "index.json lacks files_sha1, classes"),
])
def test_a_damaged_token_cache_is_one_line(cache, tmp_path, damage, says):
    path = damaged(cache, tmp_path, damage)
    with pytest.raises(ValueError, match=f"not a usable token cache.*{says}"):
        TokenCache(path)


def test_a_cache_of_another_models_tokenizer_names_the_model(cache, files):
    """`train --tokens` with the wrong --model: the two sources would read alike (random weights,
    seed 0), so the message names the model instead."""
    tiny = build_model("mage_vit_tiny_test", init_seed=1)
    as_base = types.SimpleNamespace(config=MAGE_B, vqgan=tiny.vqgan)
    with pytest.raises(ValueError, match="a mage_vit_tiny_test's tokenizer, this run's model is a "
                                         "mage_vit_base_patch16: choose --model mage_vit_tiny_test"):
        TokenCache(str(cache)).check_tokenizer(as_base, "random weights (--seed 0)")
    args = types.SimpleNamespace(model=ModelDefault("mage_vit_base_patch16"), ckpt=None, tokens=str(cache))
    resolve_model(args)
    assert args.model == "mage_vit_tiny_test"


# ---------------------------------------------------------------- devices under torchrun
def test_torchrun_takes_the_local_ranks_gpu_and_says_so(monkeypatch, caplog):
    """cuda:1 asked for in the process of local rank 0: it runs on cuda:0, and a log line says so
    (CUDA faked: what is checked is the choice, not a GPU)."""
    from mage_fast import distributed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.init("cuda:1").device == torch.device("cuda", 0) and chosen == [0]
    assert "under torchrun each process takes the GPU of its local rank, this one cuda:0" in caplog.text
    monkeypatch.delenv("LOCAL_RANK")
    assert distributed.init("cuda:1").device == torch.device("cuda", 1)   # alone: the GPU asked for
    with pytest.raises(ValueError, match="this machine has 2 GPU"):
        distributed.init("cuda:2")
