"""MAGE-C (docs/mage.md#mage-c): the NT-Xent loss against a float64 reference written here, the
step at weight 0 against MAGE's step on the same views, two gloo ranks against one process on
the same global batch, and the settings' checks."""
import copy
import os

import pytest
import torch
import torch.multiprocessing as mp

from mage_fast.cli import main
from mage_fast.model import mage_vit_tiny_test
from mage_fast.runs import Optimization, freeze_unused
from mage_fast.runs.ddp import NO_BUFFER_SYNC
from mage_fast.runs.steps import train_step
from mage_fast.training import UNUSED_BY_MAGE, TrainConfig, pretraining_optimizer
from mage_fast.training.contrastive import ContrastiveMAGE, ContrastiveSettings, nt_xent
from test_cli_errors import fails
from test_training import TINY, assert_same_state, image_folder, load, logged, train

SMALL_HEAD = dict(layers=2, hidden=32, dim=16, pool="avg", views="simclr")


def nt_xent_ref(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss as its paper writes it, one anchor at a time in float64: for anchor i of
    the 2N rows (view 0 of N images, then view 1), l_i = -log(exp(s(i, p)/t) / sum over k != i
    of exp(s(i, k)/t)), s the cosine similarity and p = i + N mod 2N; the mean of the l_i."""
    z = z.double()
    n2 = len(z)
    total = 0
    for i in range(n2):
        sims = torch.stack([torch.dot(z[i], z[k]) / (z[i].norm() * z[k].norm()) / temperature for k in range(n2)])
        others = torch.cat([sims[:i], sims[i + 1:]])
        total = total - (sims[(i + n2 // 2) % n2] - torch.logsumexp(others, 0))
    return total / n2


@pytest.mark.parametrize("n,d,temperature", [(2, 8, 0.1), (5, 16, 0.5), (7, 3, 1.0)])
def test_nt_xent_and_its_gradient_match_the_float64_reference(n, d, temperature):
    z = torch.randn(2 * n, d, requires_grad=True)
    loss = nt_xent(z, torch.arange(2 * n), temperature)
    z64 = z.detach().double().requires_grad_()
    ref = nt_xent_ref(z64, temperature)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    (grad,), (grad_ref,) = torch.autograd.grad(loss, z), torch.autograd.grad(ref, z64)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-4, atol=1e-6)


def test_nt_xent_over_some_anchors_is_their_share_of_the_mean():
    """A rank's loss: its anchors' mean; the ranks' mean is the whole batch's loss."""
    z = torch.randn(8, 5)
    halves = [nt_xent(z, torch.tensor(rows), 0.2) for rows in ([0, 1, 4, 5], [2, 3, 6, 7])]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, nt_xent(z, torch.arange(8), 0.2))


def views(batch: int, seed: int = 0):
    """Token ids [B, 2, 256] and noise [B, 2, 256] (each row a permutation / 256: no ties)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1024, (batch, 2, 256), generator=g)
    noise = torch.stack([torch.randperm(256, generator=g) for _ in range(2 * batch)]).float().view(batch, 2, 256)
    return ids, noise / 256


def both(t):
    return t.transpose(0, 1).flatten(0, 1)


def test_weight_zero_steps_exactly_as_mage_on_the_same_views():
    """With lambda 0, a MAGE-C step (clipping, AdamW) leaves the MAGE weights where MAGE's step on
    the batch of both views leaves them, bit for bit: the head adds zeros to the gradients."""
    torch.manual_seed(0)
    mage = mage_vit_tiny_test().train()
    plain = copy.deepcopy(mage)
    wrapped = ContrastiveMAGE(mage, ContrastiveSettings(weight=0.0, temperature=0.1, **SMALL_HEAD))
    ids, noise = views(2)

    def step(model, optimizer, loss_of):
        torch.manual_seed(1)  # the dropout draws
        return train_step(iter([None]), 1, lambda _, m: loss_of(), Optimization.of(optimizer, "fp32", 3.0))
    ours = step(wrapped, pretraining_optimizer(mage, 1e-3, 0.05, extra=wrapped.head),
                lambda: wrapped(tokens=ids, mask_ratio=0.7, noise=noise))
    theirs = step(plain, pretraining_optimizer(plain, 1e-3, 0.05),
                  lambda: plain(tokens=both(ids), mask_ratio=0.7, noise=both(noise)))
    assert torch.equal(ours[0], theirs[0])
    assert wrapped.parts["contrastive"] > 0
    for (name, a), b in zip(mage.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(mage.parameters(), mage_vit_tiny_test().parameters()))


def test_the_contrastive_part_reaches_the_encoder_and_not_the_decoder():
    """The loss minus its MLM part (dropout off: both forwards alike) has gradients in the
    encoder and none in the decoder; the encoder output is [2B, KEPT, D]."""
    torch.manual_seed(0)
    wrapped = ContrastiveMAGE(mage_vit_tiny_test(dropout=0.0), ContrastiveSettings(weight=1.0, temperature=0.1,
                                                                                   **SMALL_HEAD))
    ids, noise = views(2)
    mlm, encoded = wrapped.mage.forward_encoded(tokens=both(ids), mask_ratio=0.6, noise=both(noise))
    assert encoded.shape[0] == 4 and encoded.shape[-1] == wrapped.mage.config.embed_dim
    contrastive = wrapped(tokens=ids, mask_ratio=0.6, noise=noise) - mlm
    torch.testing.assert_close(contrastive, wrapped.parts["contrastive"])
    named = [(n, p) for n, p in wrapped.mage.named_parameters() if p.requires_grad]
    grads = dict(zip([n for n, _ in named], torch.autograd.grad(contrastive, [p for _, p in named],
                                                                allow_unused=True, materialize_grads=True)))
    assert grads["blocks.0.attn.qkv.weight"].abs().max() > 0
    assert not any(g.any() for n, g in grads.items() if n.startswith(("decoder", "mlm_layer")))


def _rank(rank: int, world: int, init: str, out: str, batch: int):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        loss, grads = _loss_and_grads(slice(rank * batch, (rank + 1) * batch), world)
        torch.save({"loss": loss, "grads": grads}, os.path.join(out, f"{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _loss_and_grads(rows: slice, world: int):
    """This process's loss and (DDP-averaged) gradients on `rows` of a global batch of 2 images."""
    torch.manual_seed(0)
    mage = mage_vit_tiny_test(dropout=0.0)
    freeze_unused(mage, UNUSED_BY_MAGE)  # as a run does: DDP then reduces every gradient
    wrapped = ContrastiveMAGE(mage, ContrastiveSettings(weight=1.0, temperature=0.2, **SMALL_HEAD))
    net = torch.nn.parallel.DistributedDataParallel(wrapped, **NO_BUFFER_SYNC) if world > 1 else wrapped
    ids, noise = views(2)
    loss = net(tokens=ids[rows], mask_ratio=0.6, noise=noise[rows])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in wrapped.named_parameters() if p.grad is not None}


def test_two_gloo_ranks_match_one_process_on_the_global_batch(tmp_path):
    """Negatives from the whole global batch: 2 ranks at batch 1 (pooled rows gathered with
    their gradients, the head on the global batch) give one process's gradients at batch 2,
    and the mean of their losses its loss, to fp32 round-off."""
    init = f"file://{tmp_path / 'init'}"
    mp.start_processes(_rank, args=(2, init, str(tmp_path), 1), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    with torch.random.fork_rng():
        loss, grads = _loss_and_grads(slice(0, 2), 1)
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ranks[0]["grads"].keys()
    for name, g in grads.items():
        # DDP leaves every rank the averaged gradient. norm.bias's contrastive gradient is 0 in
        # exact arithmetic (it shifts every pooled row alike, which the head's first BatchNorm
        # removes): round-off, hence an absolute bound beside the relative one.
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("bad,message", [
    (dict(contrastive_temperature=0.0), "contrastive_temperature"),
    (dict(contrastive_weight=-0.1), "contrastive_weight"),
    (dict(contrastive_pool="max"), "contrastive_pool"),
    (dict(contrastive_layers=0), "contrastive_layers"),
])
def test_bad_settings_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="d", out="o", contrastive=True, **bad)


def test_contrastive_settings_need_contrastive_and_exclude_class_conditional():
    with pytest.raises(ValueError, match="contrastive_weight need contrastive"):
        TrainConfig(data="d", out="o", contrastive_weight=1.0)
    with pytest.raises(ValueError, match="cannot be combined"):
        TrainConfig(data="d", out="o", contrastive=True, class_conditional=True)


def test_views_must_come_in_pairs():
    wrapped = ContrastiveMAGE(mage_vit_tiny_test(), ContrastiveSettings(weight=1.0, temperature=0.1, **SMALL_HEAD))
    ids, noise = views(2)
    with pytest.raises(ValueError, match="two views"):
        wrapped(tokens=ids[:, 0], mask_ratio=0.6, noise=noise)


# ---------------------------------------------------------------- the command
HEAD_FLAGS = ["--contrastive", "--contrastive-layers", "2", "--contrastive-hidden", "32", "--contrastive-dim", "16"]


def run_train(source, out, *extra):
    train(source, out, *HEAD_FLAGS, "--batch-size", "2", "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-3",
          *extra)


def test_train_contrastive_from_images_resumes_exactly_and_its_checkpoint_loads_as_mage(tmp_path, capsys):
    """`train --contrastive` from a folder: the loss and its parts logged; stopped at step 1 and
    resumed, the run ends where an uninterrupted one does, head included, bit for bit, and a
    resume with another contrastive setting is refused; the checkpoint's `model` is MAGE's keys
    exactly, so `features` and `sample` take it."""
    data = image_folder(tmp_path / "img", 4)
    run_train(data, tmp_path / "full")
    assert "MAGE-C: two simclr views per image" in capsys.readouterr().out
    run_train(data, tmp_path / "parts", "--max-steps", "1")
    assert "'temperature': 0.1" in fails(["train", "--data", str(data), "--out", str(tmp_path / "parts"), *TINY,
                                          *HEAD_FLAGS, "--batch-size", "2", "--contrastive-temperature", "0.5"])
    run_train(data, tmp_path / "parts")
    full, parts = (load(tmp_path / d / "checkpoint-last.pth") for d in ("full", "parts"))
    assert_same_state(full, parts)
    for k, v in full["contrastive_head"].items():
        assert torch.equal(v, parts["contrastive_head"][k]), k
    assert full["train_state"]["contrastive"]["views"] == "simclr"
    assert logged(tmp_path / "full", "loss") == logged(tmp_path / "parts", "loss")
    mlm, contrastive = logged(tmp_path / "full", "loss_mlm"), logged(tmp_path / "full", "loss_contrastive")
    assert all(c > 0 for c in contrastive)
    assert logged(tmp_path / "full", "loss") == pytest.approx([m + 0.045 * c for m, c in zip(mlm, contrastive)])
    assert full["model"].keys() == mage_vit_tiny_test().state_dict().keys()
    ckpt = tmp_path / "full" / "checkpoint-last.pth"
    main(["features", "--data", str(data), "--out", str(tmp_path / "f.npz"), "--ckpt", str(ckpt), *TINY[:4]])
    main(["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / "s"), "--num-images", "2", "--num-iter", "2",
          *TINY[:4]])
    assert len(list((tmp_path / "s").glob("*.png"))) == 2


def test_train_contrastive_refuses_a_one_image_batch_and_bad_settings(tmp_path):
    """One line each, exit 1 (a str message) or 2 (a usage error)."""
    data = image_folder(tmp_path / "img", 2)
    assert "at least two images per global micro-batch" in fails(
        ["train", "--data", str(data), "--out", str(tmp_path / "o"), *TINY, *HEAD_FLAGS, "--batch-size", "1"])
    assert fails(["train", "--data", str(data), "--out", str(tmp_path / "o"), *TINY, "--contrastive",
                  "--contrastive-weight", "-1"]) == 2


def test_train_contrastive_from_a_token_cache_of_two_views(tmp_path, capsys):
    data = image_folder(tmp_path / "img", 3)
    main(["tokenize", "--data", str(data), "--out", str(tmp_path / "cache"), "--views", "2", "--augment", "simclr",
          *TINY[:4]])
    run_train_tokens = ["train", "--tokens", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), *TINY,
                        *HEAD_FLAGS, "--batch-size", "2", "--epochs", "1", "--warmup-epochs", "0"]
    with torch.random.fork_rng():
        main(run_train_tokens)
    assert load(tmp_path / "run" / "checkpoint-last.pth")["train_state"]["step"] == 1
    assert "MAGE-C" in capsys.readouterr().out
