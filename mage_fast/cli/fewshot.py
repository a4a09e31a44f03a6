"""`mage-fast fewshot`: few-shot classification on features cached by `mage-fast features`.

For each number of shots k and each seed, k training examples per class are drawn, a
multinomial logistic regression (L2-regularised, as scikit-learn's LogisticRegression(C=1/l2))
is fitted by L-BFGS on L2-normalised features, and top-1 accuracy is measured on all the
validation features; prints the mean and std over seeds.
"""
import argparse

from ..distributed import check_device
from .common import positive_float, positive_int
from .linprobe import add_train_val_args, load_train_val, write_results


def shot_list(text):
    """An argparse type: positive integers separated by commas."""
    try:
        shots = [positive_int(s) for s in text.split(",") if s.strip()]
    except argparse.ArgumentTypeError:
        shots = []
    if not shots:
        raise argparse.ArgumentTypeError(f"takes positive integers separated by commas, e.g. 1,5,10; got {text!r}")
    return shots


def register(sub):
    p = sub.add_parser("fewshot", help="k-shot logistic regression (mean and std of top-1 over seeds)",
                       description=__doc__)
    add_train_val_args(p)
    p.add_argument("--shots", type=shot_list, default="1,5,10",
                   help="examples per class, comma-separated (default: %(default)s)")
    p.add_argument("--seeds", type=positive_int, default=5, help="draws per number of shots (default: %(default)s)")
    p.add_argument("--l2", type=positive_float, default=1.0, help="L2 penalty on the weights (default: %(default)s)")
    p.set_defaults(func=run)


def run(args):
    from ..recognition import few_shot
    train, val = load_train_val(args)
    results = few_shot(train, val, args.shots, args.seeds, args.l2, check_device(args.device))
    for k, r in results.items():
        print(f"{k}-shot: top-1 {r['mean']:.2f} ± {r['std']:.2f}% over {args.seeds} seeds")
    write_results(args, {str(k): r for k, r in results.items()})
