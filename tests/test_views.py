"""A contrastive run's views (training/views.py, batches, source): each colour operation against
its float64 formula written here, the draws in torchvision's order, views and noise as functions
of their keys (so a resume and a split among processes see the same batches), the pair of a
token cache's views, `tokenize --augment simclr`, and what is refused.

The exact equalities compare two runs of the same functions on the same inputs in one process:
they hold on any CPU as long as a computation repeats itself; they are marked `machine` since
the blur and the tokenizer sum in an order that oneDNN chooses."""
import colorsys
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mage_fast.cli import main
from mage_fast.data import ImageFolder, TrainTransform, files_sha1
from mage_fast.runs import TrainOrder
from mage_fast.runs.seeds import NOISE, generator
from mage_fast.training.batches import ContrastiveSamples, noise_of, view_generator, view_pairs_of_epoch
from mage_fast.training.source import data_source
from mage_fast.training.token_cache import FORMAT, VERSION, TokenCache
from mage_fast.training.views import (
    PRESETS,
    ColourDraw,
    ViewTransform,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    gaussian_kernel,
    grayscale,
)
from test_tokens import one_thread, tokenizer, vqgan_ckpt  # noqa: F401 (fixtures: one thread, as DataLoader workers)
from test_training import image_folder


def pixels(seed, h=5, w=7):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def a_picture(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))


# ---------------------------------------------------------------- the operations
def test_grayscale_brightness_contrast_and_saturation_are_their_formulas():
    x = pixels(0)
    x64 = x.double()
    gray = 0.2989 * x64[0] + 0.587 * x64[1] + 0.114 * x64[2]
    torch.testing.assert_close(grayscale(x)[0].double(), gray, rtol=0, atol=1e-6)
    for f in (0.3, 1.0, 1.6):   # 1 is the image; above 1 some values clamp at 0 or 1
        torch.testing.assert_close(adjust_brightness(x, f).double(), (f * x64).clamp(0, 1), rtol=0, atol=1e-6)
        torch.testing.assert_close(adjust_contrast(x, f).double(), (f * x64 + (1 - f) * gray.mean()).clamp(0, 1),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(adjust_saturation(x, f).double(), (f * x64 + (1 - f) * gray).clamp(0, 1),
                                   rtol=0, atol=1e-6)
    assert (adjust_brightness(x, 1.6) == 1).any() and torch.equal(adjust_saturation(x, 1.0), x)


def test_hue_shift_against_colorsys():
    x = pixels(1)
    x[:, 0, 0] = 0.4   # a gray pixel: no hue, it stays
    x[:, 0, 1] = torch.tensor([0.9, 0.2, 0.9])   # two channels at the top
    torch.testing.assert_close(adjust_hue(x, 0.0), x, rtol=0, atol=1e-6)
    for shift in (0.13, -0.4, 0.5):
        want = torch.tensor([colorsys.hsv_to_rgb((h + shift) % 1, s, v) for h, s, v in
                             (colorsys.rgb_to_hsv(*p) for p in x.double().flatten(1).T.tolist())],
                            dtype=torch.float64).T.reshape(x.shape)
        torch.testing.assert_close(adjust_hue(x, shift).double(), want, rtol=0, atol=1e-6)
    red, green, blue = torch.eye(3).view(3, 3, 1, 1)   # a 1x1 image of each pure colour
    for a, b in ((red, green), (green, blue), (blue, red)):
        torch.testing.assert_close(adjust_hue(a, 1 / 3), b, rtol=0, atol=1e-6)
        torch.testing.assert_close(adjust_hue(b, -1 / 3), a, rtol=0, atol=1e-6)


def test_gaussian_blur_against_a_direct_convolution():
    k = gaussian_kernel(5, 1.3)
    offsets = np.arange(5) - 2.0
    assert np.allclose(k.numpy(), np.exp(-offsets ** 2 / (2 * 1.3 ** 2)) / np.exp(-offsets ** 2 / (2 * 1.3 ** 2)).sum(),
                       rtol=0, atol=1e-15)
    assert abs(float(k.sum()) - 1) < 1e-12 and float(gaussian_kernel(25, 0.1)[12]) > 0.999
    torch.testing.assert_close(gaussian_blur(torch.full((3, 30, 30), 0.37), 25, 1.7), torch.full((3, 30, 30), 0.37),
                               rtol=0, atol=1e-6)
    x = pixels(2, 9, 11)
    padded = np.pad(x.double().numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect")   # mirrored without the edge
    windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(1, 2))
    want = (windows * np.outer(k.numpy(), k.numpy())).sum((-2, -1))
    assert np.allclose(gaussian_blur(x, 5, 1.3).double().numpy(), want, rtol=0, atol=1e-6)
    assert ViewTransform("simclr").blur_size == 25 and ViewTransform("simclr", size=224).blur_size == 23
    # A white image stays in [0, 1] (the tokenizer refuses more), where the float32 weights'
    # round-off once gave 1 + 2e-7 at sigmas such as 0.75 and 1.76.
    white = torch.ones(3, 32, 32)
    assert all(gaussian_blur(white, 25, s).max() <= 1 for s in torch.linspace(0.1, 2.0, 200).tolist())


# ---------------------------------------------------------------- the views
@pytest.mark.machine
def test_a_view_is_a_function_of_its_generator_drawn_in_torchvisions_order():
    """Every operation forced on: the view is the crop and flip, then, from the same generator,
    the jitter's draw (apply, permutation, four factors), the grayscale's, the blur's (apply,
    sigma), applied in that order."""
    img = a_picture()
    always = dataclasses.replace(PRESETS["simclr"], jitter_p=1.0, grayscale_p=1.0, blur_p=1.0)
    view = ViewTransform(always)(img, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    x = TrainTransform(scale=(0.08, 1.0))(img, g)
    torch.rand(1, generator=g)
    order = torch.randperm(4, generator=g).tolist()
    factors = [torch.empty(1).uniform_(lo, hi, generator=g).item() for lo, hi in ((0.2, 1.8),) * 3 + ((-0.2, 0.2),)]
    for i in order:
        x = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)[i](x, factors[i])
    torch.rand(1, generator=g)
    x = grayscale(x).repeat(3, 1, 1)
    torch.rand(1, generator=g)
    x = gaussian_blur(x, 25, torch.empty(1).uniform_(0.1, 2.0, generator=g).item())
    assert torch.equal(view, x) and view.shape == (3, 256, 256) and view.dtype == torch.float32
    simclr = ViewTransform("simclr")
    first, again = (simclr(img, torch.Generator().manual_seed(s)) for s in (7, 7))
    assert torch.equal(first, again) and not torch.equal(first, simclr(img, torch.Generator().manual_seed(8)))
    assert 0 <= float(first.min()) and float(first.max()) <= 1
    # the mage preset is the pretraining transform, draw for draw
    assert torch.equal(ViewTransform("mage")(img, torch.Generator().manual_seed(3)),
                       TrainTransform()(img, torch.Generator().manual_seed(3)))


def test_simclr_draws_each_operation_at_its_rate():
    t, g = ViewTransform("simclr"), torch.Generator().manual_seed(0)
    draws = [t.draw(g) for _ in range(4000)]
    jittered = [d.jitter for d in draws if d.jitter]
    sigmas = [d.sigma for d in draws if d.sigma is not None]
    # binomial standard deviations over 4000 draws are below 0.008
    assert abs(len(jittered) / 4000 - 0.8) < 0.03 and abs(len(sigmas) / 4000 - 0.5) < 0.03
    assert abs(sum(d.gray for d in draws) / 4000 - 0.2) < 0.03
    assert len({order for order, _ in jittered}) == 24   # every order of the four
    factors = np.array([f for _, f in jittered])
    assert (factors[:, :3] >= 0.2).all() and (factors[:, :3] <= 1.8).all() and (np.abs(factors[:, 3]) <= 0.2).all()
    assert min(sigmas) >= 0.1 and max(sigmas) <= 2.0
    state = g.get_state()
    assert ViewTransform("mage").draw(g) == ColourDraw(None, False, None)   # no colour: nothing drawn
    assert torch.equal(g.get_state(), state)


def test_view_zero_noise_is_mages_and_view_one_its_own():
    mage = torch.randperm(256, generator=generator(9, NOISE, 4, 2)).float() / 256   # the MAGE batches' noise
    assert torch.equal(noise_of(9, 4, 2, view=0), mage) and torch.equal(noise_of(9, 4, 2), mage)
    other = noise_of(9, 4, 2, view=1)
    assert torch.equal(other.sort().values, torch.arange(256) / 256) and not torch.equal(other, mage)


# ---------------------------------------------------------------- batches from an image folder
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("views") / "img", 4)


def loaded(source, order):
    return list(source.loader(order, workers=0, pin_memory=False))


@pytest.mark.machine
def test_folder_batches_hold_two_views_of_each_image_and_their_noise(folder):
    source = data_source(str(folder), None, seed=3, views="simclr")
    assert source.views == "simclr" and source.settings is None and source.input == "images"
    order = TrainOrder(4, batch=2, accum=1, seed=3, stop=1)
    (images, noise), = loaded(source, order)
    assert images.shape == (2, 2, 3, 256, 256) and images.dtype == torch.float32
    assert noise.shape == (2, 2, 256) and noise.dtype == torch.float32
    samples, pictures = source.dataset, ImageFolder(str(folder))
    assert isinstance(samples, ContrastiveSamples)
    for j, (epoch, index, micro, row) in enumerate(next(iter(order))):
        for v in range(2):
            want = ViewTransform("simclr")(pictures.load(index), generator=samples.view(epoch, index, v))
            assert torch.equal(images[j, v], want) and torch.equal(noise[j, v], noise_of(3, micro, row, view=v))
        assert not torch.equal(images[j, 0], images[j, 1])
    worker = torch.utils.data.DataLoader(samples, batch_sampler=order, num_workers=1)   # a copy of the transform
    assert_same_batches([(images, noise)], list(worker))


def split_and_resumed(source, num_images):
    """The batches of one process at batch 2 over two steps; of two processes at batch 1, put
    side by side; of a run resumed at the second step."""
    full = loaded(source, TrainOrder(num_images, batch=2, accum=1, seed=3, stop=2))
    ranks = [loaded(source, TrainOrder(num_images, batch=1, accum=1, seed=3, rank=r, world=2, stop=2)) for r in (0, 1)]
    resumed = loaded(source, TrainOrder(num_images, batch=2, accum=1, seed=3, start=1, stop=2))
    return full, [[torch.cat(parts) for parts in zip(*batches)] for batches in zip(*ranks)], resumed


def assert_same_batches(a, b):
    assert len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


@pytest.mark.machine
@pytest.mark.parametrize("views", ["mage", "simclr"])
def test_folder_batches_do_not_depend_on_a_split_or_a_resume(folder, views):
    full, split, resumed = split_and_resumed(data_source(str(folder), None, seed=3, views=views), 4)
    assert_same_batches(full, split)
    assert_same_batches(full[1:], resumed)


# ---------------------------------------------------------------- batches from a token cache
def fake_cache(path, num_views, augment="simclr", num_images=6):
    """A cache as tokenize writes one, with random ids (the reading side does not tokenize)."""
    path.mkdir()
    np.save(path / "tokens.npy", np.random.default_rng(num_views).integers(
        0, 1024, (num_images, num_views, 256), dtype=np.uint16))
    files = [f"{i}.png" for i in range(num_images)]
    index = {"format": FORMAT, "version": VERSION, "num_images": num_images, "num_views": num_views, "seed": 0,
             "transform": ViewTransform(augment or "mage").settings, "tokenizer_sha256": "0" * 64, "files": files,
             "files_sha1": files_sha1(files), "classes": [], "labels": [-1] * num_images}
    (path / "index.json").write_text(json.dumps({**index, **({"augment": augment} if augment else {})}))
    return path


@pytest.mark.parametrize("num_views", [2, 3])
def test_a_cache_run_takes_two_different_views_of_each_image(num_views):
    pairs = view_pairs_of_epoch(5, 1, 600, num_views)
    assert pairs.shape == (600, 2) and (pairs[:, 0] != pairs[:, 1]).all() and pairs.min() == 0
    assert pairs.max() == num_views - 1 and np.array_equal(pairs, view_pairs_of_epoch(5, 1, 600, num_views))
    assert not np.array_equal(pairs, view_pairs_of_epoch(5, 2, 600, num_views))   # another epoch, other pairs
    counts = np.bincount(pairs[:, 0] * num_views + pairs[:, 1], minlength=num_views ** 2)
    expected = 600 / (num_views * (num_views - 1))   # each ordered pair; 4 binomial standard deviations:
    assert all(abs(counts[a * num_views + b] - expected) < 4 * np.sqrt(expected)
               for a in range(num_views) for b in range(num_views) if a != b)


def test_cache_batches_hold_two_views_of_each_image_and_their_noise(tmp_path):
    path = fake_cache(tmp_path / "cache", 3)
    source = data_source(None, str(path), seed=5, views="simclr")
    cache = TokenCache(str(path))
    assert source.settings == {**cache.settings, "views": "simclr"} and source.input == "tokens"
    order = TrainOrder(6, batch=3, accum=1, seed=5)
    batches = loaded(source, order)
    pairs = view_pairs_of_epoch(5, 0, 6, 3)
    for (ids, noise), keys in zip(batches, order):
        assert ids.shape == (3, 2, 256) and ids.dtype == torch.int16 and noise.shape == (3, 2, 256)
        for j, (_, i, micro, row) in enumerate(keys):
            for v in range(2):
                assert np.array_equal(ids[j, v].numpy(), cache.tokens[i, pairs[i, v]].astype(np.int16))
                assert torch.equal(noise[j, v], noise_of(5, micro, row, view=v))
    full, split, resumed = split_and_resumed(source, 6)
    assert_same_batches(full, split)
    assert_same_batches(full[1:], resumed)
    assert data_source(None, str(path), seed=5).settings == cache.settings   # a MAGE run's, unchanged


# ---------------------------------------------------------------- tokenize --augment simclr
@pytest.mark.machine
def test_tokenize_augment_simclr_writes_a_cache_a_contrastive_run_reads(vqgan_ckpt, tmp_path):  # noqa: F811
    folder, out = image_folder(tmp_path / "img", 2), tmp_path / "cache"
    main(["tokenize", "--data", str(folder), "--out", str(out), "--views", "2", "--augment", "simclr",
          "--vqgan-ckpt", vqgan_ckpt, "--model", "mage_vit_tiny_test", "--device", "cpu"])
    cache = TokenCache(str(out))
    assert cache.augment == "simclr" and cache.index["transform"] == ViewTransform("simclr").settings
    assert cache.index["transform"]["colour"]["jitter"] == [0.8, 0.8, 0.8, 0.2]
    model, pictures = tokenizer(vqgan_ckpt), ImageFolder(str(folder))
    for v in range(2):
        view = ViewTransform("simclr")(pictures.load(1), generator=view_generator(0, 1, v))
        assert torch.equal(torch.from_numpy(cache.tokens[1, v].astype(np.int64)), model.tokenize(view[None])[0])
    (ids, noise), = loaded(data_source(None, str(out), seed=0, views="simclr"),
                           TrainOrder(2, batch=2, accum=1, seed=0, stop=1))
    assert ids.shape == (2, 2, 256) and noise.shape == (2, 2, 256)


# ---------------------------------------------------------------- refusals
def test_what_a_contrastive_source_refuses(folder, tmp_path):
    with pytest.raises(ValueError, match="class-conditional and contrastive training cannot be combined"):
        data_source(str(folder), None, 0, label_drop=(None, 0.1), views="simclr")
    with pytest.raises(ValueError, match=r"views must be one of \['mage', 'simclr'\], got 'byol'"):
        data_source(str(folder), None, 0, views="byol")
    with pytest.raises(ValueError, match="at least 2 views per image; make one with mage-fast tokenize --views 2"):
        data_source(None, str(fake_cache(tmp_path / "one", 1)), 0, views="simclr")
    mage = fake_cache(tmp_path / "mage", 2, augment="mage")
    with pytest.raises(ValueError, match="holds mage views, this run asks for simclr views: make a cache with "
                                         "mage-fast tokenize --augment simclr"):
        data_source(None, str(mage), 0, views="simclr")
    with pytest.raises(ValueError, match="holds simclr views, this run asks for mage"):
        data_source(None, str(fake_cache(tmp_path / "simclr", 2)), 0, views="mage")
    older = fake_cache(tmp_path / "older", 2, augment=None)   # made before presets: MAGE's crops
    assert TokenCache(str(older)).augment == "mage" and data_source(None, str(older), 0, views="mage").views == "mage"
    with pytest.raises(ValueError, match="holds mage views"):
        data_source(None, str(older), 0, views="simclr")


def test_tokenize_refuses_augment_with_center_crop(folder, tmp_path):
    with pytest.raises(SystemExit, match="one unaugmented view per image, got --augment simclr"):
        main(["tokenize", "--data", str(folder), "--out", str(tmp_path / "c"), "--center-crop", "--augment", "simclr",
              "--model", "mage_vit_tiny_test", "--device", "cpu"])
