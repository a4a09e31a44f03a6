"""The folder a sampling run writes: OUT/{i:06d}.png, OUT/manifest.json (the settings that
decide the images) and OUT.npz, each written atomically."""
import glob
import json
import os
import zipfile

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..files import atomic_write, write_json

MANIFEST = "manifest.json"


def image_path(out, index):
    return os.path.join(out, f"{index:06d}.png")


def image_seed(run_seed, index):
    """The seed of image `index`: every image has its own, whatever the batch or process."""
    return (run_seed << 32) + index


def image_label(classes, images_per_class, index):
    """The class of image `index` of a class-conditional run: classes[index // images_per_class],
    a function of the index alone, like its seed (indices past the run, which pad its last
    batch, wrap around)."""
    return classes[index // images_per_class % len(classes)]


def npz_path(out):
    return out.rstrip("/") + ".npz"


def write_png_atomic(path, pixels: np.ndarray):
    with atomic_write(path) as f:
        Image.fromarray(pixels).save(f, format="PNG", compress_level=1)  # lossless; speed over size


def remove_leftovers(out):
    """The temporary files of writes a kill interrupted."""
    for path in glob.glob(os.path.join(glob.escape(out), "*.tmp*")) + glob.glob(glob.escape(npz_path(out)) + ".tmp*"):
        os.remove(path)


def manifest(config, batch, device, classes=None, num_classes=None):
    """The settings that decide the images, the machine's included: a GPU model or a build
    other than the run's may round differently. A class-conditional run (`classes`, of the
    model's `num_classes`) adds the rule of its labels and its guidance."""
    from ..backends import backend_report
    path = lambda p: os.path.abspath(p) if p else None  # noqa: E731
    now = {"model": config.model, "impl": config.impl, "ckpt": path(config.ckpt),
           "vqgan_ckpt": path(config.vqgan_ckpt), "num_iter": config.num_iter, "temperature": config.temperature,
           "seed": config.seed, "dtype": config.dtype, "batch_size": batch,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "backends": {op: r["implementation"] for op, r in backend_report(device.type).items()}}
    if classes is not None:
        now["class_conditional"] = {"num_classes": num_classes, "classes": classes,
                                    "images_per_class": config.per_class(), "label": "classes[i // images_per_class]",
                                    "guidance_scale": config.guidance_scale,
                                    "guidance_schedule": config.guidance_schedule}
    return now


def previous_manifest(out):
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_manifest(out, now):
    write_json(os.path.join(out, MANIFEST), now)


def write_npz(out, num_images):
    """OUT.npz as np.savez writes it (arr_0, uncompressed), streamed one image at a time: 50,000
    images are 9.8 GB, which need not fit in memory."""
    shape = (num_images, 256, 256, 3)
    with atomic_write(npz_path(out)) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive, \
            archive.open("arr_0.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": shape})
        for i in tqdm(range(num_images), unit="img", desc="npz"):
            with Image.open(image_path(out, i)) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
            if pixels.shape != shape[1:]:
                raise ValueError(f"{image_path(out, i)} is {pixels.shape}, not {shape[1:]}: not this run's image")
            member.write(pixels.tobytes())
    return shape
