"""`mage-fast fewshot`: few-shot classification on features cached by `mage-fast features`.

For each number of shots k and each seed, k training examples per class are drawn, a
multinomial logistic regression (L2-regularised, as scikit-learn's LogisticRegression(C=1/l2))
is fitted by L-BFGS on L2-normalised features, and top-1 accuracy is measured on all the
validation features; prints the mean and std over seeds.
"""
from .linprobe import add_train_val_args, default_device, load_train_val, write_json


def shot_list(text):
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        shots = []
    if not shots or min(shots) < 1:
        raise ValueError(f"--shots takes positive integers separated by commas, e.g. 1,5,10; got {text!r}")
    return shots


def register(sub):
    p = sub.add_parser("fewshot", help="k-shot logistic regression (mean and std of top-1 over seeds)",
                       description=__doc__)
    add_train_val_args(p)
    p.add_argument("--shots", default="1,5,10", help="examples per class, comma-separated (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=5, help="draws per number of shots (default: %(default)s)")
    p.add_argument("--l2", type=float, default=1.0, help="L2 penalty on the weights (default: %(default)s)")
    p.set_defaults(func=run)


def run(args):
    from ..recognition import few_shot
    try:
        train, val = load_train_val(args)
        results = few_shot(train, val, shot_list(args.shots), args.seeds, args.l2, default_device(args))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"mage-fast fewshot: {e}") from None
    for k, r in results.items():
        print(f"{k}-shot: top-1 {r['mean']:.2f} ± {r['std']:.2f}% over {args.seeds} seeds")
    write_json(args, {str(k): r for k, r in results.items()})
