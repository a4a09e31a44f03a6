"""vq_nearest against the official distance + argmin (the einsum expression, fp32, TF32 off) and
torch.cdist + argmin: time, TFLOP/s (2*N*K*C; of_peak: of the bf16 tensor-core peak, which
fp32 FMA work cannot approach), peak memory and speed-up, at MAGE-B's training
shape (batch 256: 65,536 vectors x 1024 codes x 256 dims) and batch 32.

    python benchmarks/bench_vq.py            # on a GPU: writes benchmarks/results/<device>-<date>-vq.*
    python benchmarks/bench_vq.py --smoke    # tiny shapes, any machine: checks the code paths run
"""
import torch

from common import compare, device_record, finish, setup

COLUMNS = ["shape", "impl", "ms", "tflops", "of_peak", "peak_gib", "speedup", "same_ids"]


def main():
    args = setup(__doc__, "vq")
    from mage_fast.ops.vq import vq_nearest, vq_nearest_ref

    torch.backends.cuda.matmul.allow_tf32 = False  # the official expression runs in true fp32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = [(200, 300, 32)] if args.smoke else [(65536, 1024, 256), (8192, 1024, 256)]
    record = device_record()
    rows = []
    for n, k, c in shapes:
        z = torch.randn(n, c, device=device)
        codebook = torch.randn(k, c, device=device)
        ref = vq_nearest_ref(z, codebook)
        impls = {
            "official einsum+argmin": lambda: vq_nearest_ref(z, codebook),
            "torch.cdist+argmin": lambda: torch.cdist(z, codebook).argmin(1),
            "mage_fast vq_nearest": lambda: vq_nearest(z, codebook),
            "mage_fast vq_nearest (+vectors)": lambda: vq_nearest(z, codebook, return_vectors=True)[0],
            "mage_fast vq_nearest tf32x3": lambda: vq_nearest(z, codebook, precision="tf32x3"),
        }
        case = compare(impls, {"shape": f"{n}x{k}x{c}"}, record, flop=2 * n * k * c)
        for row, fn in zip(case, impls.values()):
            # random inputs: a near-tie (distances within fp32 round-off) may differ
            row["same_ids"] = (fn() == ref).float().mean().item()
        rows += case
    finish("vq", rows, COLUMNS, args, record)


if __name__ == "__main__":
    main()
