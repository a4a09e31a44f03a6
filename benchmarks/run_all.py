"""Run every benchmark on this machine and write benchmarks/results/<device>-<date>.{json,md,png}
(plus one <device>-<date>-<kernel>.{json,md} per kernel script): the model workloads of
`mage-fast bench` (training, sampling) and each bench_<kernel>.py. Extra arguments go to
`mage-fast bench` (e.g. --batch 256 --num-iter 20).

    python benchmarks/run_all.py
"""
import os
import sys

from mage_fast.cli import main

if __name__ == "__main__":
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    sys.exit(main(["bench", "--what", "all", "--out", results, *sys.argv[1:]]))
