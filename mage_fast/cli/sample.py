"""`mage-fast sample`: generate images for FID, at the largest batch the GPU holds.

Image i is generated from seed (--seed << 32) + i and written to OUT/{i:06d}.png atomically,
so a killed run resumes where it stopped: missing images are made, existing ones kept, none
duplicated. The run's settings are recorded in OUT/manifest.json; a resume must match them
(the batch size included, since a GPU's kernels may round differently at another batch size).
Under torchrun the batches are shared among the ranks.

A class-conditional checkpoint (`mage-fast train --class-conditional`) generates chosen classes:
--class-conditional --classes all --images-per-class 50 gives the class-balanced 50,000 for
FID, image i of class classes[i // images-per-class] (pinned in the manifest), with
classifier-free guidance (1 + s) x conditional - s x unconditional logits (--guidance-scale s).
"""
import os

from ..checkpoint import is_torch_file
from ..sampling import SampleConfig
from .common import DEVICE_HELP, add_model_args, add_setting, config_from_args, device


def register(sub):
    p = sub.add_parser("sample", help="generate images for FID (CUDA graphs, maximum batch, resumable)",
                       description=__doc__)

    def setting(name, help, **kwargs):
        add_setting(p, SampleConfig, name, help, **kwargs)
    add_model_args(p)
    setting("num_images", "images to generate (default: 50000 on a GPU, 8 on a CPU, with a warning; "
                          "class-conditional: classes x images-per-class, 1 per class on a CPU)")
    setting("num_iter", "decoding steps (default %(default)s; the paper's FID used 20)")
    setting("temperature", "choice temperature of the confidence noise (default %(default)s; the paper's FID used 6.0)")
    setting("seed", "run seed in [0, 2^31): image i uses (seed << 32) + i")
    setting("batch_size", "images per batch, or 'auto' for the largest that fits the GPU (default; 4 on CPU)")
    setting("dtype", "transformer and VQGAN precision (default: bf16 on CUDA, fp32 on CPU)")
    setting("out", "output folder of PNGs (what torch-fidelity reads)")
    setting("npz", "also write OUT.npz: uint8 [N, 256, 256, 3] under key arr_0 (ADM's evaluator format)")
    setting("device", DEVICE_HELP, type=device)
    setting("cuda_graphs", "run the loop eagerly (for debugging)")
    setting("class_conditional", "generate chosen classes with a class-conditional checkpoint (its number of classes "
                                 "is read off class_emb.weight)")
    setting("classes", "classes to generate, in order: 'all' (default) or indices separated by commas, e.g. 1,207,980",
            metavar="all|LIST")
    setting("images_per_class", "images of each class (default 50: with --classes all, the 50,000 for FID)")
    setting("guidance_scale", "classifier-free guidance s: logits (1 + s) x conditional - s x unconditional, both "
                              "passes in one batch (default %(default)s: no guidance, one pass)")
    setting("guidance_schedule", "constant: s at every step (default); linear: s x (t + 1) / T at step t = 0..T-1")
    p.set_defaults(func=run)


def check_before_work(config: SampleConfig):
    """Refuse, before the output folder is made or a model built: an --out that is a file, a
    checkpoint that is missing or no checkpoint at all. (On a CPU a count not given becomes a few
    images, with a warning: SampleConfig.for_device.)"""
    if os.path.exists(config.out) and not os.path.isdir(config.out):
        raise ValueError(f"--out {config.out} is a file: give a folder (new, or of an earlier run to resume)")
    for path in (config.ckpt, config.vqgan_ckpt):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path and not is_torch_file(path):
            raise ValueError(f"{path} is not a PyTorch checkpoint (a file of torch.save)")


def run(args):
    from ..sampling import sample
    config = config_from_args(SampleConfig, args)
    check_before_work(config)
    sample(config)
