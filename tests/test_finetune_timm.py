"""Fine-tuning with what comes from timm (the mage-fast[finetune] extra): mixup/cutmix targets, the
soft-target loss, RandAugment, each seeded per sample or step so a resumed run repeats them; the
evaluation transform against torchvision's; an exact resume with all of them on. Skipped
without timm (and torchvision, which it needs)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

timm = pytest.importorskip("timm")
transforms = pytest.importorskip("torchvision.transforms")

from mage_fast.data import ImageFolder  # noqa: E402
from mage_fast.finetune import FinetuneConfig, eval_transform  # noqa: E402
from mage_fast.finetune.samples import FinetuneSamples, Objective, rand_augment  # noqa: E402
from mage_fast.reference import mage_vit_tiny_test  # noqa: E402
from test_finetune import finetune, load, log_lines, write_folder  # noqa: E402


def global_states():
    return random.getstate(), np.random.get_state()[1].tolist()


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_mixed_targets_sum_to_one_and_repeat_per_step(mixup, cutmix):
    """Batch mode: one lambda per batch, each image mixed with the batch's reverse (a blend, or a
    pasted box whose area gives lambda), its smoothed one-hot target mixed alike."""
    cfg = FinetuneConfig("d", "v", "o", mixup=mixup, cutmix=cutmix, smoothing=0.1)
    objective = Objective(cfg, num_classes=5)
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    before = global_states()
    mixed, targets = objective.targets(images.clone(), labels, micro=7, rank=0)
    assert global_states() == before                       # timm's draws leave the global RNGs alone
    assert targets.shape == (6, 5) and torch.allclose(targets.sum(1), torch.ones(6))
    off, on = 0.1 / 5, 0.9 + 0.1 / 5                       # label smoothing
    assert targets.min() >= off - 1e-7
    one_hot = torch.full((6, 5), off).scatter_(1, labels[:, None], on)
    lam = ((targets[1, 1] - off) / (on - off)).item()     # image 1 (class 1) is mixed with image 4 (class 4)
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0))
    pasted = (mixed != images).any(dim=1)                  # where a box of the reverse was pasted
    blended = torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    boxed = torch.equal(mixed[:, :, pasted[0]], images.flip(0)[:, :, pasted[0]]) and \
        abs(pasted[0].float().mean().item() - (1 - lam)) < 1e-6
    assert blended if cutmix == 0 else boxed if mixup == 0 else blended or boxed
    again = objective.targets(images.clone(), labels, micro=7, rank=0)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)
    others = [objective.targets(images.clone(), labels, micro=m, rank=r)[1] for m, r in ((8, 0), (7, 1), (9, 0))]
    assert any(not torch.equal(t, targets) for t in others)
    # The loss is timm's soft-target cross-entropy.
    logits = torch.randn(6, 5)
    torch.testing.assert_close(objective.loss(logits, targets), (-targets * logits.log_softmax(-1)).sum(-1).mean())


def test_rand_augment_is_seeded_per_image_and_epoch(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / name / "0.png")
    folder = ImageFolder(str(tmp_path))
    samples = FinetuneSamples(folder, seed=0, augment=rand_augment("rand-m9-mstd0.5-inc1", 256))
    plain = FinetuneSamples(folder, seed=0)
    before = global_states()
    image, label = samples[(0, 1, 0, 0)]
    assert global_states() == before and label == 1 and image.shape == (3, 256, 256)
    assert torch.equal(samples[(0, 1, 5, 3)][0], image)           # a function of (epoch, image) only
    assert not torch.equal(samples[(1, 1, 0, 0)][0], image)       # another epoch, another augmentation
    changed = sum(not torch.equal(samples[(e, 0, 0, 0)][0], plain[(e, 0, 0, 0)][0]) for e in range(6))
    assert changed >= 3                                           # RandAugment acts (each op with p = 0.5)
    with pytest.raises(ValueError, match="RandAugment policy"):
        rand_augment("rand-q9", 256)


def test_eval_transform_matches_torchvision():
    """The official evaluation transform with torchvision, normalised by the ImageNet mean and
    std as util/datasets.py does and denormalised as engine_finetune.py does: our [0, 1] images
    to float round-off."""
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    official = transforms.Compose([
        transforms.Resize(292, interpolation=Image.BICUBIC), transforms.CenterCrop(256), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None], torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    rng = np.random.default_rng(0)
    for h, w in ((300, 400), (401, 299), (64, 48), (500, 257)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        torch.testing.assert_close(eval_transform()(img), official(img) * std + mean, rtol=0, atol=1e-6)


def test_resume_with_mixup_cutmix_and_rand_augment_is_exact(tmp_path):
    """All of timm's augmentation on (batches of 2, each mixed with its reverse), stopped after
    the first step and resumed: the state of the uninterrupted run, bit for bit."""
    rng = np.random.default_rng(1)
    data = (tmp_path, write_folder(tmp_path / "train", 2, rng), write_folder(tmp_path / "val", 1, rng))
    torch.manual_seed(0)
    torch.save({"model": mage_vit_tiny_test().state_dict()}, tmp_path / "pre.pth")
    run = ["--batch-size", "2", "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-2", "--layer-decay", "0.3",
           "--small-set", "0"]   # the official augmentation, which the small-set recipe turns off on 4 images
    finetune(data, tmp_path / "full", *run)
    finetune(data, tmp_path / "parts", *run, "--max-steps", "1")
    finetune(data, tmp_path / "parts", *run)
    full, parts = (load(tmp_path / d / "checkpoint-last.pth") for d in ("full", "parts"))
    assert full["args"].mixup == 0.8 and full["args"].cutmix == 1.0 and full["args"].aa == "rand-m9-mstd0.5-inc1"
    for k in full["model"]:
        assert torch.equal(full["model"][k], parts["model"][k]), k
    assert full["train_state"] == parts["train_state"]
    losses = [[r.get("loss") for r in log_lines(tmp_path / d)] for d in ("full", "parts")]
    assert losses[0] == losses[1]
