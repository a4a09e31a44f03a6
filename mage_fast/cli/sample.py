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
from ..sampling import SampleConfig
from .common import add_model_args, add_setting, config_from_args


def register(sub):
    p = sub.add_parser("sample", help="generate images for FID (CUDA graphs, maximum batch, resumable)",
                       description=__doc__)

    def setting(name, help, **kwargs):
        add_setting(p, SampleConfig, name, help, **kwargs)
    add_model_args(p)
    setting("num_images", "images to generate (default 50000; class-conditional: classes x images-per-class)")
    setting("num_iter", "decoding steps (default %(default)s; the paper's FID used 20)")
    setting("temperature", "choice temperature of the confidence noise (default %(default)s; the paper's FID used 6.0)")
    setting("seed", "run seed in [0, 2^31): image i uses (seed << 32) + i")
    setting("batch_size", "images per batch, or 'auto' for the largest that fits the GPU (default; 4 on CPU)")
    setting("dtype", "transformer and VQGAN precision (default: bf16 on CUDA, fp32 on CPU)")
    setting("out", "output folder of PNGs (what torch-fidelity reads)")
    setting("npz", "also write OUT.npz: uint8 [N, 256, 256, 3] under key arr_0 (ADM's evaluator format)")
    setting("device", "cuda or cpu (default: cuda if available)")
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


def run(args):
    from .. import distributed
    from ..sampling import sample
    try:
        sample(config_from_args(SampleConfig, args))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"mage-fast sample: {e}") from None
    finally:
        distributed.shutdown()
