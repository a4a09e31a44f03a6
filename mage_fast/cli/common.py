"""What several subcommands share: choosing and loading a model, argument types."""
import argparse
import logging
import math

from ..configs import CONFIGS

log = logging.getLogger("mage_fast")

RANDOM_WEIGHTS_WARNING = """
################################################################################
#  No --ckpt given: the model has RANDOM WEIGHTS. Outputs are meaningless; use  #
#  this only to test the pipeline. Official checkpoints: mage-vitb-1600.pth,    #
#  mage-vitl-1600.pth (LTH14/mage).                                             #
################################################################################"""


def add_model_args(parser, default="mage_vit_base_patch16"):
    parser.add_argument("--model", choices=sorted(CONFIGS), default=default,
                        help=f"model size (default: {default})")
    parser.add_argument("--impl", choices=("fast", "reference"), default="fast",
                        help="fast module (Triton/CUDA kernels) or the pure-PyTorch reference (default: fast)")
    parser.add_argument("--ckpt", metavar="PATH",
                        help="official MAGE checkpoint (mage-vit{b,l}-1600.pth); without it, random weights")
    parser.add_argument("--vqgan-ckpt", metavar="PATH",
                        help="tokenizer checkpoint (vqgan_jax_strongaug.ckpt), if --ckpt lacks vqgan.* keys")


def load_model(args, device):
    """The model named by --model with --ckpt/--vqgan-ckpt loaded strictly, in eval mode."""
    from ..checkpoint import load_checkpoint
    from ..model import build_model
    model = build_model(args.model, args.impl)
    if args.ckpt or args.vqgan_ckpt:
        report = load_checkpoint(model, args.ckpt, args.vqgan_ckpt)
        log.info("checkpoint: %s", report)
    if not args.ckpt:
        log.warning(RANDOM_WEIGHTS_WARNING)
    return model.to(device).eval()


def _at_least(convert, low, what):
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not low <= value < math.inf:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _at_least(int, 1, "a positive integer")
non_negative_int = _at_least(int, 0, "an integer >= 0")
non_negative_float = _at_least(float, 0.0, "a finite number >= 0")
