"""Merge the per-script results of one device and date, as a GPU session run in short stages
leaves them (benchmarks/results/<device>-<date>-<name>.json from each bench_*.py), into
<device>-<date>.{json,md,png}: every table in one file, and the plot of our speed-ups.

    python benchmarks/collect.py                      # this machine's device, today
    python benchmarks/collect.py --prefix NVIDIA_H100_80GB_HBM3-2026-11-22
"""
import argparse
import sys

from common import RESULTS, device_record
from mage_fast.bench.report import collect, stem


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default=RESULTS, help=f"where the results are (default: {RESULTS})")
    parser.add_argument("--prefix", help="<device>-<date> of the files to merge (default: this device, today)")
    args = parser.parse_args()
    try:
        written = collect(args.results_dir, args.prefix or stem(device_record()))
    except FileNotFoundError as e:
        sys.exit(f"collect: {e}")
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
