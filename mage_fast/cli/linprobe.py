"""`mage-fast linprobe`: the official MAGE linear probe on features cached by `mage-fast features`.

BatchNorm1d(affine=False) + Linear, trained with LARS (momentum 0.9, no weight decay) for 90
epochs, lr = blr * batch / 256 with a linear warm-up then a cosine decay; prints top-1 and top-5
accuracy on the validation features. On ImageNet that is ~28,000 optimizer steps. LARS moves the
weights by a thousandth of their norm (times the lr) per step, so a small training set (one step
per epoch) gets the schedule stretched to --min-steps steps, and a set smaller than --batch-size
is one batch that keeps the lr of --batch-size: the whole set's gradient has no sampling noise
for a smaller lr to offset. The output says which schedule ran.
"""
from ..distributed import check_device
from ..files import write_json
from .common import add_device, integer, non_negative_float, non_negative_int, positive_float, positive_int


def add_train_val_args(p):
    """The arguments that `linprobe` and `fewshot` share."""
    p.add_argument("--train", required=True, metavar="FEATS",
                   help="training features (.npz or .pt from `mage-fast features`)")
    p.add_argument("--val", required=True, metavar="FEATS", help="validation features, same model and classes")
    add_device(p)
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")


def load_train_val(args):
    from ..recognition import load_features
    return load_features(args.train), load_features(args.val)


def write_results(args, results):
    """The results to --json, where it is given."""
    if args.json:
        write_json(args.json, results)


def register(sub):
    p = sub.add_parser("linprobe", help="linear probe (top-1/top-5) on cached features", description=__doc__)
    add_train_val_args(p)
    p.add_argument("--epochs", type=positive_int, default=90, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=4096,
                   help="(default: %(default)s, the official 128 x 32 GPUs; a smaller training set is one batch, "
                        "with the lr of this batch size)")
    p.add_argument("--blr", type=positive_float, default=0.1,
                   help="base lr; lr = blr * batch-size / 256 (default: %(default)s; the official ViT-L run used 0.05)")
    p.add_argument("--warmup-epochs", type=non_negative_float, default=None,
                   help="(default: epochs / 9, i.e. 10 of 90)")
    p.add_argument("--seed", type=integer, default=0, help="head initialisation and batch order (default: %(default)s)")
    p.add_argument("--min-steps", type=non_negative_int, default=1000,
                   help="stretch a shorter schedule (epochs and warm-up alike) to this many optimizer steps; "
                        "0 keeps the official schedule whatever the data size (default: %(default)s)")
    p.set_defaults(func=run)


def run(args):
    from ..recognition import linear_probe
    train, val = load_train_val(args)
    r = linear_probe(train, val, args.epochs, args.batch_size, args.blr, args.warmup_epochs,
                     args.seed, check_device(args.device), min_steps=args.min_steps)
    print(f"linear probe: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  ({r['train']} train, {r['val']} val, "
          f"{r['classes']} classes, {r['epochs']} epochs, {r['steps']} steps, batch {r['batch_size']}, "
          f"lr {r['lr']:.4g})")
    print(f"schedule: {r['schedule']}")
    write_results(args, r)
