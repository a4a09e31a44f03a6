"""`mage-fast fid`: FID and Inception Score of generated images with torch-fidelity.

--ref is a folder of reference images (ImageNet val: Resize 256 + CenterCrop 256, saved as
PNG, docs/mage.md#evaluation-and-published-numbers) or a .npz of precomputed statistics with arrays `mu` and `sigma`.
torch-fidelity (which needs torchvision) is an optional extra, and the Inception weights a
download: pass their file with --inception-weights on machines without internet.
"""
import os
import urllib.error

from ..distributed import check_device
from ..files import write_json
from .common import add_device, positive_int


def register(sub):
    p = sub.add_parser("fid", help="FID / Inception Score of a folder of generated images (torch-fidelity)",
                       description=__doc__)
    p.add_argument("--gen", required=True, help="folder of generated PNGs")
    p.add_argument("--ref", required=True, help="folder of reference images, or a .npz with mu and sigma")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="torch-fidelity's Inception weights file (pt_inception-2015-12-05-*.pth); "
                        "default: torch-fidelity downloads them")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per Inception forward (default 64)")
    add_device(p)
    p.add_argument("--json", metavar="PATH", help="also write the metrics to this JSON file")
    p.set_defaults(func=run)


def _torch_fidelity():
    try:
        import torch_fidelity
        from torch_fidelity import metric_fid
    except ModuleNotFoundError as e:  # torch-fidelity itself, or torchvision, which it imports
        package = {"torch_fidelity": "torch-fidelity"}.get(e.name, e.name)
        raise ImportError(f"{package} is not installed (fid needs torch-fidelity and torchvision): "
                          f"pip install {package}") from None
    return torch_fidelity, metric_fid


def _inception(fidelity, options):
    """torch-fidelity's Inception network, its weights from --inception-weights or downloaded
    (then cached, so the metrics below load them from there)."""
    try:
        return fidelity.utils.create_feature_extractor("inception-v3-compat", ["2048"], **options)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise OSError(f"torch-fidelity could not download the Inception weights (pt_inception-2015-12-05-*.pth): "
                         f"{e}. Fetch them on a machine with internet and pass --inception-weights PATH") from None


def run(args):
    import numpy as np
    fidelity, metric_fid = _torch_fidelity()
    for path, what in ((args.gen, "--gen folder"), (args.ref, "--ref")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} not found: {path}")
    if args.inception_weights and not os.path.isfile(args.inception_weights):
        raise FileNotFoundError(f"--inception-weights file not found: {args.inception_weights}")
    options = dict(cuda=check_device(args.device).startswith("cuda"),
                   batch_size=args.batch_size, feature_extractor_weights_path=args.inception_weights,
                   samples_find_ext="png,jpg,jpeg", verbose=False)
    extractor = _inception(fidelity, options)
    if os.path.isdir(args.ref):
        metrics = fidelity.calculate_metrics(input1=args.gen, input2=args.ref, isc=True, fid=True, **options)
    else:
        stats = np.load(args.ref)
        if "mu" not in stats or "sigma" not in stats:
            raise ValueError(f"{args.ref} must hold arrays 'mu' and 'sigma' (reference Inception statistics)")
        metrics = fidelity.calculate_metrics(input1=args.gen, isc=True, **options)
        gen_stats = metric_fid.fid_input_id_to_statistics(1, extractor, "2048", input1=args.gen, **options)
        ref_stats = {k: stats[k].astype(gen_stats[k].dtype) for k in ("mu", "sigma")}
        metrics.update(metric_fid.fid_statistics_to_metric(gen_stats, ref_stats, verbose=False))
    for name, value in metrics.items():
        print(f"{name:40s} {value:.4f}")
    if args.json:
        write_json(args.json, metrics)
