"""Shared by the per-kernel benchmark scripts: their arguments and where their results go.
Timing and reporting live in mage_fast.bench (measure, report), which `mage-fast bench` uses too.

Every script takes --smoke (tiny shapes, any machine: proves its code paths run; the timings
mean nothing) and --results-dir (default benchmarks/results; a smoke run writes only there).
Warnings raised while a script times (FlexAttention's eager fallback on CPU, for one) are kept
and listed after its table."""
import argparse
import os
import sys
import warnings

import torch

from mage_fast.bench.measure import attainable_tflops, bench_ms, compare, device_record, roofline_peak  # noqa: F401
from mage_fast.bench.report import print_warnings, table, write

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CAUGHT: list = []  # the warnings of this script's run, listed by finish


def keep_warning(message, category, filename, lineno, file=None, line=None):
    CAUGHT.append(warnings.WarningMessage(message, category, filename, lineno, file, line))


def setup(doc: str, name: str, extra=None):
    """Parse the script's arguments (extra(parser) adds its own); without CUDA only --smoke runs."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, any machine: checks the script runs")
    parser.add_argument("--results-dir", help=f"where the result files go (default: {RESULTS}; "
                        "a --smoke run writes files only when this is given)")
    if extra:
        extra(parser)
    args = parser.parse_args()
    warnings.showwarning = keep_warning
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit(f"bench_{name}: no CUDA device. Timings mean something only on a GPU; --smoke checks "
                 "on CPU that the script runs.")
    return args


def finish(name: str, rows, columns, args, record=None):
    """Print the table; write <device>-<date>-<name>.{json,md} unless this is a smoke run that
    was given no --results-dir."""
    print(table(rows, columns))
    print_warnings(CAUGHT, name)
    if args.smoke and not args.results_dir:
        return
    path = write(args.results_dir or RESULTS, record or device_record(), {name: (rows, columns)}, name)
    print(f"wrote {path}.json and .md")
