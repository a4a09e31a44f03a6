"""`mage-fast`: the command-line entry point. Each subcommand lives in its own module."""
import argparse
import logging

from . import bench, edit, evaluate, features, fewshot, fid, finetune, info, linprobe, sample, tokenize, train

SUBCOMMANDS = (info, bench, sample, edit, fid, features, linprobe, fewshot, tokenize, train, finetune, evaluate)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="mage-fast",
        description="Fast MAGE (Masked Generative Encoder): benchmarks, sampling, training, "
                    "and what a bug report needs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args) or 0
