"""`mage-fast train` (docs/mage.md#recipe): the recipe's pieces on known numbers, then short CPU runs of
the command: the loss falls, checkpoints are official and resume exactly, and two DDP processes
match one process on the same global batch."""
import argparse
import dataclasses
import math
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

from helpers import rel_err, strict_json, torch_threads
from mage_fast import training
from mage_fast.cli import main
from mage_fast.data import ImageFolder
from mage_fast.reference import mage_vit_tiny_test
from mage_fast.runs import TrainOrder, freeze_unused, scaled_lr, warmup_cosine_lr
from mage_fast.training import UNUSED_BY_MAGE, TrainConfig, TrainSamples, param_groups

TINY = ["--model", "mage_vit_tiny_test", "--device", "cpu", "--workers", "0", "--log-every", "1"]
UNUSED = {"cls_token", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
          "decoder_pred.weight", "decoder_pred.bias"}


def image_folder(path, n):
    """n random 48x64 RGB images (not square, so crops differ in shape)."""
    rng = np.random.default_rng(n)
    path.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


def train(data, out, *extra):
    with torch.random.fork_rng():  # the run reseeds the process RNG
        main(["train", "--data", str(data), "--out", str(out), *TINY, *extra])


def load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def logged(out, key):
    with open(out / "log.jsonl") as f:
        return [strict_json(line)[key] for line in f]


def assert_same_state(a, b, params_atol=0.0, moments_rel=0.0):
    """Model and optimizer state of two checkpoints: equal, or parameters within params_atol
    and Adam's moments within a relative error of moments_rel, per tensor."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=params_atol, msg=k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for i in sa:
        assert torch.equal(sa[i]["step"], sb[i]["step"])
        for k in ("exp_avg", "exp_avg_sq"):
            assert rel_err(sa[i][k], sb[i][k]) <= moments_rel, (i, k)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["train_state"] == b["train_state"]


# The official model (LTH14/mage models_mage.py): its own parameters and its submodules in the
# order its __init__ assigns them, which orders its named_parameters() and so its optimizer's.
# Inside the submodules ours registers alike.
OFFICIAL_OWN = ("cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "decoder_pos_embed_learned")
OFFICIAL_MODULES = ("vqgan", "token_emb", "patch_embed", "blocks", "norm", "decoder_embed", "decoder_blocks",
                    "decoder_norm", "decoder_pred", "mlm_layer")


def official_param_groups(model, weight_decay):
    """timm's add_weight_decay (as the official main_pretrain.py calls it) over the parameters
    of `model` in the official model's order."""
    assert tuple(model._parameters) == OFFICIAL_OWN
    assert {n for n, _ in model.named_children()} == set(OFFICIAL_MODULES)
    named = [(n, getattr(model, n)) for n in OFFICIAL_OWN]
    named += [item for m in OFFICIAL_MODULES for item in getattr(model, m).named_parameters(prefix=m)]
    decay, no_decay = [], []
    for name, param in named:
        if not param.requires_grad:
            continue  # frozen weights
        if len(param.shape) == 1 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


# ---------------------------------------------------------------- the recipe's pieces
def test_lr_schedule_on_known_numbers():
    lr = 1e-3
    assert warmup_cosine_lr(0, lr, 0, 40, 1600) == 0
    assert warmup_cosine_lr(10, lr, 0, 40, 1600) == pytest.approx(2.5e-4)            # linear warm-up
    assert warmup_cosine_lr(39.5, lr, 0, 40, 1600) == pytest.approx(lr * 39.5 / 40)  # fractional epochs
    assert warmup_cosine_lr(40, lr, 0, 40, 1600) == pytest.approx(lr)
    assert warmup_cosine_lr(820, lr, 0, 40, 1600) == pytest.approx(5e-4)             # half-way down the cosine
    assert warmup_cosine_lr(560, lr, 0, 40, 1600) == pytest.approx(7.5e-4)           # a third: (1 + cos(pi/3)) / 2
    assert warmup_cosine_lr(820, lr, 1e-4, 40, 1600) == pytest.approx(5.5e-4)
    assert warmup_cosine_lr(1600, lr, 1e-5, 40, 1600) == pytest.approx(1e-5)


def test_lr_scaling_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)   # the paper's batch
    assert scaled_lr(1.5e-4, 64 * 8 * 2) == pytest.approx(1.5e-4 * 4)


def test_parameter_groups_follow_timm_over_the_official_trainable_set():
    torch.manual_seed(0)
    model = mage_vit_tiny_test()
    unfrozen = official_param_groups(model, 0.05)
    freeze_unused(model, UNUSED_BY_MAGE)
    no_decay, decay = param_groups(model, 0.05)
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.05)
    for ours, official in zip((no_decay, decay), unfrozen):   # the same tensors, in the same order
        assert list(map(id, ours["params"])) == list(map(id, official["params"]))
    name = {id(p): n for n, p in model.named_parameters()}
    got_no_decay = {name[id(p)] for p in no_decay["params"]}
    got_decay = {name[id(p)] for p in decay["params"]}
    params = dict(model.named_parameters())
    trainable = {n for n in params if not n.startswith("vqgan.")} - {"pos_embed", "decoder_pos_embed"}
    assert got_no_decay | got_decay == trainable and not got_no_decay & got_decay and UNUSED <= trainable
    assert got_no_decay == {n for n in trainable if params[n].ndim <= 1 or n.endswith(".bias")}
    assert "mlm_layer.bias" in got_no_decay and params["mlm_layer.bias"].ndim == 3
    assert {"token_emb.LayerNorm.weight", "blocks.0.norm1.weight", "decoder_embed.bias"} <= got_no_decay
    assert {"token_emb.word_embeddings.weight", "decoder_pos_embed_learned", "blocks.0.attn.qkv.weight",
            "mlm_layer.fc.weight"} <= got_decay


def test_frozen_parameters_are_exactly_those_the_forward_never_uses():
    """What lets DDP run with find_unused_parameters=False: after freeze_unused every
    trainable parameter gets a gradient."""
    torch.manual_seed(0)
    model = mage_vit_tiny_test().train()
    model(torch.rand(1, 3, 256, 256), mask_ratio=0.7, noise=torch.rand(1, 256)).backward()
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert no_grad == UNUSED
    freeze_unused(model, UNUSED_BY_MAGE)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_order_is_a_per_epoch_permutation_split_by_rank_and_resumable():
    full = list(TrainOrder(10, batch=2, accum=1, seed=3, stop=8))   # 5 steps/epoch: two epochs
    epoch0 = [k[1] for batch in full[:5] for k in batch]
    epoch1 = [k[1] for batch in full[5:] for k in batch]
    assert sorted(epoch0) == list(range(10)) and len(set(epoch1)) == 6 and epoch0[:6] != epoch1
    assert [k[0] for batch in full for k in batch] == [0] * 10 + [1] * 6
    ranks = [list(TrainOrder(10, batch=1, accum=1, seed=3, rank=r, world=2, stop=8)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == full            # the same keys: images, micro-batch, row
    assert list(TrainOrder(10, batch=2, accum=1, seed=3, start=3, stop=8)) == full[3:]
    accumulated = list(TrainOrder(10, batch=1, accum=2, seed=3, stop=4))
    assert [k[1] for b in accumulated for k in b] == [k[1] for b in full[:4] for k in b]
    assert TrainOrder(10, batch=2, accum=1, seed=3).settings != TrainOrder(10, batch=2, accum=1, seed=4).settings
    with pytest.raises(ValueError, match="holds only 3"):
        TrainOrder(3, batch=2, accum=1, seed=0, world=2)


def test_samples_are_functions_of_their_key(tmp_path):
    samples = TrainSamples(ImageFolder(str(image_folder(tmp_path / "img", 2))), seed=0)
    image, noise = samples[(0, 1, 5, 3)]
    again, same_noise = samples[(0, 1, 5, 3)]
    assert image.shape == (3, 256, 256) and torch.equal(image, again) and torch.equal(noise, same_noise)
    assert torch.equal(noise.sort().values, torch.arange(256) / 256)   # no ties: no redraw needed
    assert not torch.equal(samples[(1, 1, 5, 3)][0], image)             # another epoch, another crop
    assert not torch.equal(samples[(0, 1, 5, 4)][1], noise)             # another row, other noise
    order = TrainOrder(2, batch=1, accum=1, seed=0, stop=3)
    batches = [list(torch.utils.data.DataLoader(samples, batch_sampler=order, num_workers=w)) for w in (0, 2)]
    assert len(batches[0]) == len(batches[1]) == 3                    # workers change nothing:
    assert all(torch.equal(a, b) for x, y in zip(*batches) for a, b in zip(x, y))


# ---------------------------------------------------------------- runs of the command
@pytest.fixture(scope="module")
def repeated_batch_run(tmp_path_factory):
    """Two images, batch 2: every step sees the same images (in other crops and masks)."""
    root = tmp_path_factory.mktemp("repeated")
    data = image_folder(root / "img", 2)
    train(data, root / "out", "--batch-size", "2", "--epochs", "12", "--warmup-epochs", "0",
          "--lr", "3e-3", "--keep-every", "0")
    return data, root / "out"


def test_loss_is_finite_and_falls(repeated_batch_run):
    _, out = repeated_batch_run
    losses = logged(out, "loss")
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert losses[0] > 6.8                                      # ~ln(1024) at random weights
    assert np.mean(losses[:2]) - np.mean(losses[-3:]) > 0.15, losses


def test_checkpoint_has_the_official_format(repeated_batch_run):
    _, out = repeated_batch_run
    assert sorted(os.listdir(out)) == ["checkpoint-11.pth", "checkpoint-last.pth", "log.jsonl"]
    ckpt = load(out / "checkpoint-last.pth")
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= ckpt.keys()
    assert ckpt["epoch"] == 11 and isinstance(ckpt["args"], argparse.Namespace)
    assert ckpt["args"].batch_size == 2 and ckpt["args"].precision == "fp32"
    assert ckpt["train_state"] == {"step": 12, "step_in_epoch": 0, "seed": 0, "num_images": 2,
                                   "global_batch": 2, "accum_iter": 1}
    fresh = mage_vit_tiny_test()
    fresh.load_state_dict(ckpt["model"], strict=True)             # the unwrapped module's keys
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])


def test_checkpoint_resumes_the_official_way(repeated_batch_run):
    """The official misc.load_model on our checkpoint: the model strictly, the optimizer into
    AdamW over the official model's groups (so every parameter's state lands on it), the scaler
    into an enabled GradScaler (the official NativeScaler's), though this run had none (fp32)."""
    _, out = repeated_batch_run
    ckpt = load(out / "checkpoint-last.pth")
    torch.manual_seed(0)
    official = mage_vit_tiny_test()   # no freeze_unused: the official trainable set
    params = dict(official.named_parameters())
    assert {n for n, p in params.items() if not p.requires_grad} == \
        {"pos_embed", "decoder_pos_embed"} | {n for n in params if n.startswith("vqgan.")}
    official.load_state_dict(ckpt["model"], strict=True)
    groups = official_param_groups(official, 0.05)
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))
    optimizer.load_state_dict(ckpt["optimizer"])
    sizes = [len(g["params"]) for g in groups]
    assert [len(g["params"]) for g in ckpt["optimizer"]["param_groups"]] == sizes
    assert sizes == [sum(p.ndim <= 1 or n.endswith(".bias") for n, p in params.items() if p.requires_grad),
                     sum(p.ndim > 1 and not n.endswith(".bias") for n, p in params.items() if p.requires_grad)]
    name = {id(p): n for n, p in params.items()}
    stepped = {name[id(p)] for p in optimizer.state}
    assert stepped == {n for n, p in params.items() if p.requires_grad} - UNUSED   # never had a gradient
    for p, state in optimizer.state.items():
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == p.shape and state["step"] == 12, name[id(p)]
    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict(ckpt["scaler"])
    assert scaler.state_dict() == torch.amp.GradScaler("cpu").state_dict()   # a fresh scale


@pytest.mark.machine
def test_resume_continues_exactly(tmp_path):
    """Stopped at step 3 (mid-epoch) and resumed to step 4, the run ends in the state of an
    uninterrupted one, bit for bit: dropout active, accumulation over two micro-batches."""
    data = image_folder(tmp_path / "img", 4)
    common = ["--batch-size", "1", "--accum-iter", "2", "--epochs", "2", "--warmup-epochs", "1", "--keep-every", "1"]
    train(data, tmp_path / "full", *common)
    train(data, tmp_path / "parts", *common, "--max-steps", "3")
    assert load(tmp_path / "parts" / "checkpoint-last.pth")["train_state"]["step"] == 3
    train(data, tmp_path / "parts", *common)
    full, parts = (load(tmp_path / d / "checkpoint-last.pth") for d in ("full", "parts"))
    assert_same_state(full, parts)
    assert logged(tmp_path / "full", "loss") == logged(tmp_path / "parts", "loss")
    assert load(tmp_path / "full" / "checkpoint-0.pth")["train_state"]["step"] == 2
    # The lr of step s (logged after it) follows the schedule at the fractional epoch (s - 1) / 2,
    # peaking at blr * (1 image x 1 process x 2 accumulated) / 256.
    peak = scaled_lr(1.5e-4, 2)
    assert logged(tmp_path / "full", "lr") == pytest.approx([warmup_cosine_lr(s / 2, peak, 0, 1, 2) for s in range(4)])


@pytest.mark.machine
def test_sigint_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    """Ctrl-C to `mage-fast train` mid-run: it saves the step it is at, says so and exits
    non-zero; resumed one step further it ends in the state of an uninterrupted run, bit for bit
    (one thread in both processes: the same summation order)."""
    data = image_folder(tmp_path / "img", 4)
    common = ["--batch-size", "1", "--accum-iter", "2", "--epochs", "30", "--warmup-epochs", "1", "--keep-every", "0"]
    cmd = [sys.executable, "-m", "mage_fast.cli", "train", "--data", str(data), "--out", str(tmp_path / "parts"),
           *TINY, *common]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = tmp_path / "parts" / "log.jsonl"
    while proc.poll() is None and not (log.exists() and log.read_text().count("\n") >= 1):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "interrupted" in err, err[-2000:]
    step = load(tmp_path / "parts" / "checkpoint-last.pth")["train_state"]["step"]
    assert 1 <= step < 60 and logged(tmp_path / "parts", "step")[-1] == step
    with torch_threads(1):
        train(data, tmp_path / "parts", *common, "--max-steps", str(step + 1))
        train(data, tmp_path / "full", *common, "--max-steps", str(step + 1))
    full, parts = (load(tmp_path / d / "checkpoint-last.pth") for d in ("full", "parts"))
    assert_same_state(full, parts)
    assert logged(tmp_path / "full", "loss") == logged(tmp_path / "parts", "loss")


def test_fp16_resume_restores_the_loss_scaler(tmp_path):
    data = image_folder(tmp_path / "img", 2)
    common = ["--batch-size", "1", "--epochs", "1", "--warmup-epochs", "0", "--precision", "fp16"]
    train(data, tmp_path / "out", *common, "--max-steps", "1")
    train(data, tmp_path / "out", *common)
    scaler = load(tmp_path / "out" / "checkpoint-last.pth")["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] == 2   # counted on from step 1


@pytest.mark.machine
def test_two_ddp_processes_match_one_process(tmp_path):
    """Two gloo ranks at batch 1 and one process at batch 2 take the same steps: the global
    batch's images, crops, mask ratios and noise are functions of (seed, counters), so the only
    difference is where the gradient sum is split (dropout off)."""
    data = image_folder(tmp_path / "img", 8)
    common = ["--accum-iter", "2", "--epochs", "2", "--max-steps", "3", "--warmup-epochs", "0",
              "--lr", "1e-3", "--dropout", "0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mage_fast.cli", "train", "--data", str(data), "--out", str(tmp_path / "ddp"),
           *TINY, "--batch-size", "1", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    train(data, tmp_path / "one", "--batch-size", "2", *common)
    ddp, one = (load(tmp_path / d / "checkpoint-last.pth") for d in ("ddp", "one"))
    assert ddp["train_state"]["global_batch"] == one["train_state"]["global_batch"] == 2
    moved = max((one["model"][k] - v).abs().max().item() for k, v in mage_state_at_init().items())
    assert moved > 1e-3                   # the steps moved the weights, both runs alike:
    # gradients to fp32 rounding. The key biases' gradient is 0 in exact arithmetic (softmax
    # ignores a constant added to every score of a row), so what they get is rounding noise,
    # which Adam scales up to steps of lr whatever its size: on another CPU's BLAS path those
    # noise-driven steps differ by up to lr each. They are held to 3 steps of lr; every other
    # weight to 3% of one step.
    for state in (ddp, one):
        state["model"] = dict(state["model"])
    for k in [k for k in one["model"] if k.endswith("attn.qkv.bias")]:
        d = one["model"][k].shape[0] // 3
        torch.testing.assert_close(ddp["model"][k][d:2 * d], one["model"][k][d:2 * d], rtol=0, atol=3e-3, msg=k)
        for state in (ddp, one):
            state["model"][k] = torch.cat([state["model"][k][:d], state["model"][k][2 * d:]])
    assert_same_state(ddp, one, params_atol=3e-5, moments_rel=1e-4)


def mage_state_at_init():
    torch.manual_seed(0)   # what `train` seeds before it builds the model (--seed 0)
    return mage_vit_tiny_test(dropout=0.0).state_dict()


# ---------------------------------------------------------------- from Python
@pytest.mark.machine
def test_training_runs_from_python_as_the_command_does(repeated_batch_run, tmp_path):
    """A TrainConfig and train(), no torchrun and no ctx: the same first steps as the command's
    run with the same settings, and the config as the checkpoint's args."""
    data, out = repeated_batch_run
    config = TrainConfig(data=data, out=tmp_path / "py", model="mage_vit_tiny_test", device="cpu", batch_size=2,
                         epochs=12, warmup_epochs=0, lr=3e-3, keep_every=0, log_every=1, max_steps=2)
    with torch.random.fork_rng():
        training.train(config)
    assert logged(tmp_path / "py", "loss") == logged(out, "loss")[:2]
    ckpt = load(tmp_path / "py" / "checkpoint-last.pth")
    assert ckpt["train_state"]["step"] == 2
    assert vars(ckpt["args"]) == dataclasses.asdict(config.for_device("cpu"))
    assert ckpt["args"].data == str(data) and ckpt["args"].workers == 0 and ckpt["args"].precision == "fp32"


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(batch_size=2.0), "batch_size must be an integer >= 1, got 2.0"),
    (dict(dropout=1.0), "dropout must be a finite number in [0, 1), got 1.0"),
    (dict(lr=float("inf")), "lr must be a finite number > 0"),
    (dict(seed=True), "seed must be an integer >= 0"),
    (dict(warmup_epochs=3, epochs=2), "warmup_epochs must be in [0, epochs]"),
    (dict(model="mage_vit_huge"), "model must be one of mage_vit_base_patch16"),
    (dict(precision="fp8"), "precision must be one of bf16, fp16, fp32"),
    (dict(compile=1), "compile must be a bool"),
    (dict(data=""), "data must be a path"),
])
def test_config_refuses_bad_settings_naming_the_field(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**{"data": "img", "out": "out", **change})


def test_config_chooses_the_device_defaults():
    config = TrainConfig(data="img", out="out")
    assert (config.precision, config.workers) == (None, None)
    assert (config.for_device("cuda").precision, config.for_device("cuda").workers) == ("bf16", 10)
    assert (config.for_device("cpu").precision, config.for_device("cpu").workers) == ("fp32", 0)
    chosen = dataclasses.replace(config, precision="fp16", workers=3)
    assert chosen.for_device("cuda") == chosen.for_device("cpu") == chosen


# ---------------------------------------------------------------- the command line
def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "torchrun" in out and "--vqgan-ckpt" in out


@pytest.mark.parametrize("extra, message", [
    (["--warmup-epochs", "5", "--epochs", "2"], "warmup_epochs must be in"),
    (["--batch-size", "4"], "holds only 2"),
    (["--batch-size", "2", "--resume", "/no/such.pth"], "no such checkpoint"),
])
def test_bad_input_is_a_clear_error(tmp_path, extra, message):
    data = image_folder(tmp_path / "img", 2)
    with pytest.raises(SystemExit, match=message):
        train(data, tmp_path / "out", *extra)


@pytest.mark.parametrize("flag", ["--batch-size=0", "--dropout=1", "--lr=nan", "--seed=-1", "--max-steps=0",
                                  "--precision=fp8"])
def test_bad_numbers_are_usage_errors_naming_the_flag(tmp_path, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        train(tmp_path / "nothing", tmp_path / "out", flag)    # refused before the folder is read
    assert exit_.value.code == 2 and f"argument {flag.split('=')[0]}:" in capsys.readouterr().err


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="image folder not found"):
        train(tmp_path / "nothing", tmp_path / "out")


def test_resume_refuses_another_data_order_or_foreign_file(repeated_batch_run, tmp_path):
    data, out = repeated_batch_run
    with pytest.raises(SystemExit, match="other data-order settings.*seed"):
        train(data, tmp_path / "out", "--batch-size", "2", "--seed", "1", "--resume",
              str(out / "checkpoint-last.pth"))
    foreign = tmp_path / "weights.pth"
    torch.save({"model": mage_vit_tiny_test().state_dict()}, foreign)
    with pytest.raises(SystemExit, match="not a checkpoint of `mage-fast train`"):
        train(data, tmp_path / "out", "--batch-size", "2", "--resume", str(foreign))
    older = load(out / "checkpoint-last.pth")   # as earlier versions saved it: one parameter fewer
    older["optimizer"]["param_groups"][1]["params"].pop()
    torch.save(older, tmp_path / "older.pth")
    with pytest.raises(SystemExit, match="optimizer state does not fit.*earlier mage-fast.*--resume none"):
        train(data, tmp_path / "out", "--batch-size", "2", "--resume", str(tmp_path / "older.pth"))
