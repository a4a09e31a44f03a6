"""mage-fast sample without a count on a CPU: a few images and a warning with the estimate of the
default's time there (MAGE-B's 50,000 would take ~85 days), not a run toward 50,000."""
import logging

import pytest

from mage_fast.sampling import SampleConfig
from mage_fast.sampling.config import CPU_IMAGES, UNCONDITIONAL_IMAGES


def test_a_cpu_run_without_a_count_makes_a_few_images_and_says_why(caplog):
    with caplog.at_level(logging.WARNING, logger="mage_fast"):
        config = SampleConfig(out="o").for_device("cpu")
    assert config.num_images == CPU_IMAGES == config.image_count(None) and config.dtype == "fp32"
    assert caplog.messages == ["no GPU: 8 images (--num-images sets how many); the 50,000 of an FID set would take "
                               "~85 days (mage_vit_base_patch16: ~147 s an image on a two-core CPU)"]


@pytest.mark.parametrize("device, settings, count", [
    ("cuda", {}, UNCONDITIONAL_IMAGES),                      # a GPU keeps the FID set
    ("cpu", {"num_images": 50000}, 50000),                  # a count given is kept, without a word
    ("cpu", {"num_images": 3, "model": "mage_vit_tiny_test"}, 3),
])
def test_a_given_count_or_a_gpu_keeps_its_count(device, settings, count, caplog):
    with caplog.at_level(logging.WARNING, logger="mage_fast"):
        assert SampleConfig(out="o", **settings).for_device(device).image_count(None) == count
    assert not caplog.messages


def test_a_class_conditional_cpu_run_makes_one_image_per_class(caplog):
    with caplog.at_level(logging.WARNING, logger="mage_fast"):
        config = SampleConfig(out="o", class_conditional=True, guidance_scale=3.0).for_device("cpu")
        assert config.image_count([0, 1, 2]) == 3
        given = SampleConfig(out="o", class_conditional=True, images_per_class=2).for_device("cpu")
    assert given.image_count([0, 1, 2]) == 6
    # Guided: two forwards a step, so each image costs ~1.8x.
    assert caplog.messages == ["no GPU: 1 image per class (--images-per-class sets how many); the 50 of each of "
                               "1000 classes would take ~157 days (mage_vit_base_patch16: ~271 s an image on a "
                               "two-core CPU)"]
