"""Class-conditional MAGE: the label token and its keys, label dropout, the frozen encoder,
guidance, class-conditional training and sampling runs, and an end-to-end run whose two
classes, trained from their token ids, generate each its own class's ids.
(The fast module against the reference, kernels included: test_model.py.)"""
import argparse
import dataclasses
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import strict_json, torch_threads
from mage_fast import model as fast
from mage_fast.checkpoint import load_checkpoint
from mage_fast.cli import main
from mage_fast.configs import MASK_ID, NUM_TOKENS
from mage_fast.model_settings import ModelSettings
from mage_fast.reference import model as reference
from mage_fast.reference.model import CLASS_KEYS, drop_labels, guidance_at
from mage_fast.runs import freeze_unused
from mage_fast.sampling import SampleConfig, image_label, image_path, image_seed
from mage_fast.sampling.sampler import Sampler
from mage_fast.training import UNUSED_BY_MAGE, TrainConfig
from mage_fast.training.batches import Labels
from mage_fast.training.optim import pretraining_optimizer
from mage_fast.training.source import data_source

TINY = ["--model", "mage_vit_tiny_test", "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: on a shared two-core machine, two threads per process ran ~20x slower."""
    with torch_threads(1):
        yield


def conditional(num_classes=3, impl=reference):
    torch.manual_seed(0)
    return impl.mage_vit_tiny_test(class_conditional=True, num_classes=num_classes).eval()


def load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- the model
def test_the_label_adds_two_keys_and_changes_no_other_weight():
    torch.manual_seed(0)
    plain = reference.mage_vit_tiny_test().state_dict()
    cond = conditional(5).state_dict()
    assert [k for k in cond if k not in plain] == ["class_pos_embed", "class_emb.weight"]
    assert [k for k in cond if k in plain] == list(plain)      # the same keys, in the same order
    assert all(torch.equal(plain[k], cond[k]) for k in plain)  # drawn as without the label
    assert cond["class_emb.weight"].shape == (6, 96) and cond["class_pos_embed"].shape == (1, 1, 96)
    assert 0.01 < cond["class_emb.weight"].std() < 0.03


def test_labels_are_checked():
    model, plain = conditional(3), reference.mage_vit_tiny_test()
    ids = torch.randint(0, 1024, (2, NUM_TOKENS))
    cases = [(model, None, "needs labels"), (model, torch.tensor([0, 4]), r"lie in \[0, 3\]"),
             (model, torch.tensor([0, -1]), r"lie in \[0, 3\]"),
             (model, torch.tensor([0, 1], dtype=torch.int32), "int64"),
             (model, torch.tensor([0]), r"shape \[2\]"), (plain, torch.tensor([0, 1]), "not class-conditional")]
    for m, labels, message in cases:
        with pytest.raises(ValueError, match=message):
            m(tokens=ids, mask_ratio=0.6, labels=labels)
        with pytest.raises(ValueError, match=message):
            m.logits(ids, labels)
    with pytest.raises(ValueError, match="guidance_scale needs a class-conditional model"):
        plain.generate([0], guidance_scale=1.0)
    with pytest.raises(ValueError, match="guidance_schedule"):
        model.generate([0], labels=[1], guidance_schedule="cosine")
    with pytest.raises(ValueError, match="num_classes"):
        reference.mage_vit_tiny_test(class_conditional=True, num_classes=0)


def test_an_unconditional_checkpoint_starts_a_conditional_model(tmp_path):
    """Every key loads but the label's two, which keep their fixed initial values and are
    reported by name; any other missing key is still an error."""
    torch.manual_seed(3)
    plain = reference.mage_vit_tiny_test()
    torch.save({"model": plain.state_dict()}, tmp_path / "plain.pth")
    model = conditional(4)
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k in CLASS_KEYS}
    with torch.no_grad():
        model.class_emb.weight.add_(1.0)
    report = load_checkpoint(model, str(tmp_path / "plain.pth"))
    assert report.initialised == sorted(CLASS_KEYS) and not report.missing and "initialised (2)" in str(report)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in fresh.items())
    partial = {k: v for k, v in plain.state_dict().items() if k != "decoder_norm.weight"}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing.*decoder_norm.weight"):
        load_checkpoint(model, str(tmp_path / "partial.pth"))
    torch.save({"model": model.state_dict()}, tmp_path / "cond.pth")
    with pytest.raises(ValueError, match="unexpected.*class_emb.weight"):
        load_checkpoint(reference.mage_vit_tiny_test(), str(tmp_path / "cond.pth"))


def test_the_model_of_a_checkpoint_is_read_off_its_keys(tmp_path):
    torch.save({"model": conditional(7).state_dict()}, tmp_path / "cond.pth")
    torch.save({"model": reference.mage_vit_tiny_test().state_dict()}, tmp_path / "plain.pth")
    settings = ModelSettings(model="mage_vit_tiny_test", ckpt=tmp_path / "cond.pth")
    model = settings.load("cpu", class_conditional=True)
    assert model.class_conditional and model.num_classes == 7
    with pytest.raises(ValueError, match="is class-conditional .*class_emb.weight"):
        settings.load("cpu")
    with pytest.raises(ValueError, match="not class-conditional: it has no class_emb.weight"):
        dataclasses.replace(settings, ckpt=str(tmp_path / "plain.pth")).load("cpu", class_conditional=True)


def test_label_dropout_rate_and_keys():
    """Each label becomes "no class" with probability `drop`, as a function of (seed, micro-batch,
    row) alone; the others are kept."""
    labels = Labels([1, 2] * 10000, num_classes=5, drop=0.1, seed=3)
    got = np.array([labels(i, i // 64, i % 64) for i in range(20000)])
    dropped = got == 5
    assert abs(dropped.mean() - 0.1) < 0.0085                  # 4 standard deviations at n = 20,000
    assert (got[~dropped] == np.array([1, 2] * 10000)[~dropped]).all()
    assert [labels(0, 7, r) for r in range(50)] == [labels(0, 7, r) for r in range(50)]
    assert all(Labels([1], 5, 0.0, 3)(0, m, 0) == 1 for m in range(200))
    assert torch.equal(drop_labels(torch.tensor([3, 4]), torch.tensor([0.05, 0.5]), 0.1, 9), torch.tensor([9, 4]))


def test_a_frozen_encoder_gets_no_gradient_and_does_not_move():
    """Class-conditional training over a frozen encoder: the encoder's weights keep their bits
    and get no .grad, are not in the optimizer, and the decoder and the label token train."""
    torch.manual_seed(0)
    model = fast.mage_vit_tiny_test(class_conditional=True, num_classes=2).train()
    freeze_unused(model, UNUSED_BY_MAGE)
    model.freeze_encoder()
    encoder = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(reference.ENCODER)}
    decoder = {n: p.detach().clone() for n, p in model.named_parameters()
               if n.startswith(("decoder_blocks.", "decoder_embed.", "class_emb.", "class_pos_embed"))}
    assert len(encoder) > 10 and len(decoder) > 10
    optimizer = pretraining_optimizer(model, 1e-3, 0.05)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in trained for n, p in model.named_parameters() if n in encoder)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        loss = model(tokens=torch.randint(0, 1024, (4, NUM_TOKENS), generator=g), mask_ratio=0.7,
                     labels=torch.tensor([0, 1, 2, 1]))
        loss.backward()
        optimizer.step()
        params = dict(model.named_parameters())
        assert all(params[n].grad is None for n in encoder)
        optimizer.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], w) for n, w in encoder.items())
    assert all(not torch.equal(params[n], w) for n, w in decoder.items())


# ---------------------------------------------------------------- guidance
@pytest.mark.machine
def test_guidance_zero_is_the_conditional_model_alone():
    """s = 0 runs one pass: the decoding loop on the conditional logits, exactly."""
    model = conditional(3)
    seeds, labels = torch.tensor([4, 5]), torch.tensor([2, 0])
    ids = torch.full((2, NUM_TOKENS), MASK_ID)
    for step in range(3):
        ids, filled = model.decoding_step(model.logits_unchecked(ids, labels), ids, seeds, step, 3, 4.5)
    assert torch.equal(model.generate(seeds, 3, labels=labels), filled)
    assert torch.equal(model.generate(seeds, 3, labels=labels, guidance_scale=0.0, guidance_schedule="linear"), filled)
    assert not torch.equal(model.generate(seeds, 3, labels=labels, guidance_scale=3.0), filled)


def test_guided_logits_are_muse_guidance():
    model = conditional(3)
    ids = torch.where(torch.rand(2, NUM_TOKENS, generator=torch.Generator().manual_seed(0)) < 0.5, MASK_ID,
                      torch.randint(0, 1024, (2, NUM_TOKENS)))
    labels = torch.tensor([1, 2])
    cond, uncond = model.logits(ids, labels), model.logits(ids, torch.tensor([3, 3]))
    torch.testing.assert_close(model.guided_logits(ids, labels, 1.5), 2.5 * cond - 1.5 * uncond, rtol=1e-5, atol=1e-4)
    assert [guidance_at(2.0, "constant", t, 4) for t in range(4)] == [2.0] * 4
    assert [guidance_at(2.0, "linear", t, 4) for t in range(4)] == [0.5, 1.0, 1.5, 2.0]


@pytest.mark.machine
def test_guided_sampler_equals_generate_and_does_not_depend_on_the_batch():
    """Per image, as the CPU sampler computes (its two passes one batch of two)."""
    model = conditional(3)
    sampler = Sampler(model, num_iter=3, guidance_scale=2.0, guidance_schedule="linear")
    seeds, labels = [10, 11, 12, 13], [2, 0, 3, 1]
    ids = sampler.generate(seeds, labels)
    for i in range(4):
        want = model.generate([seeds[i]], 3, labels=[labels[i]], guidance_scale=2.0, guidance_schedule="linear")
        assert torch.equal(ids[i:i + 1], want), i
    assert torch.equal(sampler.generate([13, 11], [1, 0]), ids[[3, 1]])
    assert not torch.equal(sampler.generate([10], [1]), ids[:1])       # the label changes the image
    with pytest.raises(ValueError, match="needs labels"):
        sampler.generate([1])
    with pytest.raises(ValueError, match="guidance_scale needs a class-conditional model"):
        Sampler(reference.mage_vit_tiny_test(), guidance_scale=1.0)


# ---------------------------------------------------------------- sampling runs
def test_sample_config_class_settings():
    config = SampleConfig(out="o", class_conditional=True, classes="3,1", images_per_class=4)
    assert config.class_list(5) == [3, 1] and config.image_count([3, 1]) == 8
    assert SampleConfig(out="o", class_conditional=True).class_list(3) == [0, 1, 2]
    assert SampleConfig(out="o", class_conditional=True).image_count(list(range(1000))) == 50000
    assert [image_label([3, 1], 4, i) for i in (0, 3, 4, 7, 8)] == [3, 3, 1, 1, 3]
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 3\)"):
        config.class_list(3)
    for change, message in [(dict(classes="1"), "need class_conditional"),
                            (dict(guidance_scale=1.0), "need class_conditional"),
                            (dict(class_conditional=True, num_images=10), "give images_per_class"),
                            (dict(class_conditional=True, classes="1,1"), "distinct"),
                            (dict(class_conditional=True, classes="a"), "distinct class indices"),
                            (dict(class_conditional=True, guidance_scale=-1.0), "guidance_scale must be"),
                            (dict(class_conditional=True, guidance_schedule="cosine"), "guidance_schedule must be")]:
        with pytest.raises(ValueError, match=message):
            SampleConfig(out="o", **change)


def sample_args(out, ckpt, *extra):
    return ["sample", *TINY, "--ckpt", str(ckpt), "--out", str(out), "--num-iter", "2", "--batch-size", "3",
            "--class-conditional", *extra]


@pytest.mark.machine
def test_class_conditional_sampling_pins_its_labels_and_resumes(tmp_path):
    """mage-fast sample --class-conditional: image i of class classes[i // images_per_class], its
    pixels the sampler's for (seed_i, label_i) whatever the batch; the rule pinned in the
    manifest; a killed run resumes to the same files; other labels or guidance are refused."""
    torch.save({"model": conditional(3).state_dict()}, tmp_path / "cond.pth")
    out, args = tmp_path / "run", ["--classes", "2,0", "--images-per-class", "2", "--guidance-scale", "1.5"]
    main(sample_args(out, tmp_path / "cond.pth", *args))
    recorded = strict_json((out / "manifest.json").read_text())["class_conditional"]
    assert recorded == {"num_classes": 3, "classes": [2, 0], "images_per_class": 2,
                        "label": "classes[i // images_per_class]", "guidance_scale": 1.5,
                        "guidance_schedule": "constant"}
    files = {i: (out / f"{i:06d}.png").read_bytes() for i in range(4)}
    assert sorted(os.listdir(out)) == [f"{i:06d}.png" for i in range(4)] + ["manifest.json"]
    model = ModelSettings(model="mage_vit_tiny_test", ckpt=tmp_path / "cond.pth").load("cpu", class_conditional=True)
    sampler = Sampler(model, num_iter=2, guidance_scale=1.5)
    for i in (0, 3):  # classes 2 and 0
        want = sampler.sample([image_seed(0, i)], [[2, 2, 0, 0][i]])[0].numpy()
        assert np.array_equal(np.asarray(Image.open(image_path(out, i))), want), i
    os.remove(image_path(out, 3))
    main(sample_args(out, tmp_path / "cond.pth", *args))
    assert all((out / f"{i:06d}.png").read_bytes() == files[i] for i in range(4))
    for other in (["--classes", "0,2", "--images-per-class", "2", "--guidance-scale", "1.5"],
                  ["--classes", "2,0", "--images-per-class", "2", "--guidance-scale", "1.0"]):
        with pytest.raises(SystemExit, match="other settings.*class_conditional"):
            main(sample_args(out, tmp_path / "cond.pth", *other))


# ---------------------------------------------------------------- training runs
def test_train_config_class_settings():
    for change, message in [(dict(num_classes=3), "need class_conditional"),
                            (dict(train_encoder=True), "need class_conditional"),
                            (dict(label_drop=0.2), "need class_conditional"),
                            (dict(class_conditional=True, label_drop=1.0), "label_drop must be a finite number in [0"),
                            (dict(class_conditional=True, num_classes=1), "num_classes must be an integer >= 2")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig(data="d", out="o", **change)


def two_class_folder(path, make, per_class=4, seed=0):
    """Images of class a and b (subfolders) from make(class index, rng)."""
    rng = np.random.default_rng(seed)
    for c in range(2):
        (path / "ab"[c]).mkdir(parents=True)
        for i in range(per_class):
            make(c, rng).save(path / "ab"[c] / f"{i}.png")
    return path


def noise_image(c, rng):
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def train(data, out, *extra, source="--data"):
    with torch.random.fork_rng():  # the run reseeds the process RNG
        main(["train", source, str(data), "--out", str(out), *TINY, "--workers", "0", "--log-every", "1", *extra])


def test_training_from_an_unconditional_checkpoint_keeps_its_encoder(tmp_path):
    """train --class-conditional --ckpt UNCONDITIONAL: the encoder (and tokenizer) keep the
    checkpoint's bits, the decoder and the label token train; the checkpoint records the
    class-conditional settings, and a resume with others is refused."""
    data = two_class_folder(tmp_path / "img", noise_image, per_class=2)
    torch.manual_seed(5)
    start = reference.mage_vit_tiny_test().state_dict()
    torch.save({"model": start}, tmp_path / "plain.pth")
    out = tmp_path / "run"
    train(data, out, "--class-conditional", "--ckpt", str(tmp_path / "plain.pth"), "--batch-size", "2",
          "--max-steps", "2", "--warmup-epochs", "0", "--lr", "1e-3", "--epochs", "2")
    ckpt = load(out / "checkpoint-last.pth")
    state = ckpt["model"]
    assert all(torch.equal(state[k], v) for k, v in start.items() if k.startswith(("vqgan.", *reference.ENCODER)))
    assert not torch.equal(state["decoder_embed.weight"], start["decoder_embed.weight"])
    assert state["class_emb.weight"].shape == (3, 96)
    assert ckpt["train_state"]["class_conditional"] == {"label_drop": 0.1, "train_encoder": False, "num_classes": 2}
    assert ckpt["args"].class_conditional and ckpt["args"].label_drop == 0.1
    with pytest.raises(SystemExit, match="other data-order settings.*class_conditional"):
        train(data, out, "--class-conditional", "--label-drop", "0.2", "--batch-size", "2", "--max-steps", "3",
              "--warmup-epochs", "0", "--epochs", "2")
    with pytest.raises(SystemExit, match="other data-order settings.*class_conditional"):
        train(data, out, "--batch-size", "2", "--max-steps", "3", "--warmup-epochs", "0", "--epochs", "2")


def test_class_conditional_training_needs_classes(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        noise_image(0, np.random.default_rng(i)).save(flat / f"{i}.png")
    with pytest.raises(SystemExit, match="needs labels: .* has 0 class"):
        train(flat, tmp_path / "out", "--class-conditional", "--batch-size", "2")
    data = two_class_folder(tmp_path / "img", noise_image, per_class=1)
    (data / "c").mkdir()
    noise_image(0, np.random.default_rng(9)).save(data / "c" / "0.png")
    with pytest.raises(SystemExit, match="num_classes is 2 but .* has 3 classes"):
        train(data, tmp_path / "out", "--class-conditional", "--num-classes", "2", "--batch-size", "2")


# ---------------------------------------------------------------- end to end
def stripes_or_gradient(c, rng):
    """Class a: stripes of random phase and brightness; class b: a colour gradient. Through the
    tiny random tokenizer (its codebook at the scale of the encoder's outputs) their crops give
    token histograms 1.3 apart in L1 (of at most 2)."""
    if c == 0:
        a = np.zeros((48, 48, 3), np.uint8)
        a[(np.arange(48) + rng.integers(0, 8)) % 8 < 4] = rng.integers(150, 256)
        return Image.fromarray(a)
    x = np.broadcast_to(np.arange(48) * 5, (48, 48)).astype(np.uint8)
    return Image.fromarray(np.stack([x, 255 - x, x // 2], -1))


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """A tiny class-conditional model trained for 300 steps (lr 1e-2, dropout 0) from a token
    cache of a two-class folder (2 views per image, 4 images per class), frozen encoder."""
    root = tmp_path_factory.mktemp("two_classes")
    data = two_class_folder(root / "img", stripes_or_gradient)
    torch.manual_seed(1234)
    tokenizer = fast.mage_vit_tiny_test()
    with torch.no_grad():
        tokenizer.vqgan.quantize.embedding.weight.normal_(std=0.3)
    torch.save({"state_dict": tokenizer.vqgan.state_dict()}, root / "vqgan.ckpt")
    main(["tokenize", "--data", str(data), "--out", str(root / "cache"), "--views", "2",
          "--vqgan-ckpt", str(root / "vqgan.ckpt"), *TINY])
    args = ["--class-conditional", "--vqgan-ckpt", str(root / "vqgan.ckpt"), "--batch-size", "4",
            "--warmup-epochs", "0", "--lr", "1e-2", "--dropout", "0", "--keep-every", "0"]
    train(root / "cache", root / "run", *args, "--epochs", "150", source="--tokens")
    return root, args


def histogram(ids):
    return torch.bincount(ids.reshape(-1), minlength=1024).double() / ids.numel()


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_each_class_generates_its_own_tokens(two_classes, scale):
    """Per class, the histogram of the generated ids is closer (L1) to that class's training
    ids than to the other class's, by a margin (measured, classes a and b: 0.65 and 0.69 against
    1.14 and 1.10 unguided; 1.18 and 0.99 against 1.73 and 1.63 at guidance 3, which draws from
    fewer ids and widens the gap)."""
    root, _ = two_classes
    tokens = torch.from_numpy(np.load(root / "cache" / "tokens.npy").astype(np.int64))
    own = [histogram(tokens[:4]), histogram(tokens[4:])]       # the folder's order: class a, then b
    assert (own[0] - own[1]).abs().sum() > 1.2                 # the classes tokenize apart
    model = ModelSettings(model="mage_vit_tiny_test", ckpt=root / "run" / "checkpoint-last.pth").load(
        "cpu", class_conditional=True)
    for c in (0, 1):
        got = histogram(model.generate(list(range(8)), num_iter=4, labels=[c] * 8, guidance_scale=scale))
        to_own, to_other = (got - own[c]).abs().sum(), (got - own[1 - c]).abs().sum()
        assert to_own < to_other - 0.2, (c, float(to_own), float(to_other))


def test_batches_carry_the_labels_of_the_folder_or_the_cache(two_classes):
    """An image's label is its class subfolder's index, from the folder or the cache's index;
    without dropout as it is, at label_drop 1/2 "no class" (2) about half the time."""
    root, _ = two_classes
    want = [0] * 4 + [1] * 4
    for data, tokens in ((str(root / "img"), None), (None, str(root / "cache"))):
        kept = data_source(data, tokens, 0, (None, 0.0))
        halved = data_source(data, tokens, 0, (None, 0.5))
        assert kept.classes == ["a", "b"]
        keys = [(0, i, 0, i) for i in range(8)]
        eight = [(0, i % 8, i // 8, i) for i in range(64)]    # each image in 8 micro-batches: 8 draws
        if tokens:  # a micro-batch at once: (ids, noise, labels)
            got, drops = kept.dataset[keys][2].tolist(), halved.dataset[eight][2].tolist()
        else:
            got, drops = [kept.dataset[k][2] for k in keys], [halved.dataset[k][2] for k in eight]
        assert got == want
        assert 16 <= drops.count(2) <= 48 and all(d in (w, 2) for d, w in zip(drops, want * 8))


@pytest.mark.machine
def test_training_from_tokens_with_labels_resumes_exactly(two_classes, tmp_path):
    """Two steps straight equal one step, a stop, and one more: the label drops come from the
    run's seed and counters, like the noise."""
    root, args = two_classes
    for out, stops in ((tmp_path / "straight", [2]), (tmp_path / "resumed", [1, 2])):
        for stop in stops:
            train(root / "cache", out, *args, "--epochs", "2", "--max-steps", str(stop), source="--tokens")
    a, b = load(tmp_path / "straight" / "checkpoint-last.pth"), load(tmp_path / "resumed" / "checkpoint-last.pth")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert json.dumps(a["train_state"]) == json.dumps(b["train_state"])
