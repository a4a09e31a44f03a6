"""`mage-fast`: the command-line entry point. Each subcommand lives in its own module; errors,
interrupts and torch.distributed's shutdown are handled here, once for all of them.

Exit status: 0 done; 2 a usage error, which argparse finds before any work (an unknown flag, a
number out of its range, a device this machine lacks); 1 an error met while running (a missing
or damaged file, a checkpoint of another kind or size, settings a resumed run does not share, a
missing optional package, CUDA out of memory), printed as the one line `mage-fast CMD: message`
on stderr; 130 interrupted (Ctrl-C). -v/--verbose also prints the traceback.
"""
import argparse
import logging
import sys
import traceback

import torch

from .. import distributed
from . import bench, edit, evaluate, features, fewshot, fid, finetune, info, linprobe, sample, tokenize, train
from .common import resolve_model

SUBCOMMANDS = (info, bench, sample, edit, fid, features, linprobe, fewshot, tokenize, train, finetune, evaluate)
EXIT_INTERRUPTED = 130  # an error exits 1: SystemExit with a message
LONGEST = 400  # characters of a message shown without -v (torch's key mismatches run to tens of KB)
# What a user's input or machine can cause; anything else is a bug and keeps its traceback.
EXPECTED = (ValueError, OSError, ImportError, FloatingPointError, torch.OutOfMemoryError)


def one_line(error: BaseException) -> str:
    """The error's message on one line, cut at LONGEST characters. An error re-raised from a
    DataLoader worker carries the worker's traceback, whose last line is the message."""
    text = str(error)
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.strerror}: {error.filename}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Original Traceback" in text:
        lines = [lines[-1].split(": ", 1)[-1]]
    text = " ".join(lines) or type(error).__name__
    return text if len(text) <= LONGEST else text[:LONGEST] + "... (mage-fast -v shows it all)"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="mage-fast",
        description="Fast MAGE (Masked Generative Encoder): benchmarks, sampling, training, "
                    "and what a bug report needs.",
        epilog="exit status: 0 done, 1 an error while running (one line on stderr), 2 a usage error, "
               "130 interrupted")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        resolve_model(args)
        return args.func(args) or 0
    except KeyboardInterrupt as e:
        if args.verbose:
            traceback.print_exc()
        # A training run stopped by a signal says where it saved (runs/loop.py); Ctrl-C elsewhere says nothing.
        print(f"mage-fast {args.command}: {one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except EXPECTED as e:
        if args.verbose:
            traceback.print_exc()
        raise SystemExit(f"mage-fast {args.command}: {one_line(e)}") from None
    finally:
        distributed.shutdown()
