"""The command line: `mage-fast info`, --help, and the FLOP counts the benchmarks report."""

import pytest
import torch

from helpers import strict_json
from mage_fast.bench.flops import detokenizer_flops, tokenizer_flops
from mage_fast.cli import main
from mage_fast.configs import MAGE_B, MAGE_L, SEQ_LEN, flops_per_image


def test_info_text_and_json(capsys):
    main(["info"])
    out = capsys.readouterr().out
    assert "torch" in out and "extension" in out and ("nvml" in out or "driver" in out)
    main(["info", "--json"])
    info = strict_json(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["extension"]["built"] and info["extension"]["cpu"]
    assert "error" in info["nvml"] or info["nvml"]["gpus"]


def test_help_explains_each_command(capsys):
    for cmd in ([], ["info"], ["bench"]):
        with pytest.raises(SystemExit) as exit_:
            main(cmd + ["--help"])
        assert exit_.value.code == 0
    assert "--model" in capsys.readouterr().out


def test_flop_counts_match_the_documented_figures():
    """docs/kernels.md#model-flop-counts: tokenizer ~129 and decoder ~187 GFLOP/image; a generation step ~78
    (MAGE-B) and ~217 (MAGE-L) GFLOP/image."""
    assert abs(tokenizer_flops(MAGE_B) / 1e9 - 129) < 1
    assert abs(detokenizer_flops(MAGE_B) / 1e9 - 187) < 1
    assert abs(flops_per_image(MAGE_B, SEQ_LEN) / 1e9 - 78) < 1
    assert abs(flops_per_image(MAGE_L, SEQ_LEN) / 1e9 - 217) < 1
