"""The command line: `mage-fast info` and the CPU run of `mage-fast bench` (what `make bench` runs)."""
import json

import pytest
import torch

from mage_fast.benchmark import detokenizer_flops, tokenizer_flops
from mage_fast.cli import main
from mage_fast.configs import MAGE_B, MAGE_L, SEQ_LEN, flops_per_image


def test_info_text_and_json(capsys):
    main(["info"])
    out = capsys.readouterr().out
    assert "torch" in out and "extension" in out and ("nvml" in out or "driver" in out)
    main(["info", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["extension"]["built"] and info["extension"]["cpu"]
    assert "error" in info["nvml"] or info["nvml"]["gpus"]


def test_help_explains_each_command(capsys):
    for cmd in ([], ["info"], ["bench"]):
        with pytest.raises(SystemExit) as exit_:
            main(cmd + ["--help"])
        assert exit_.value.code == 0
    assert "--model" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the bench")
def test_bench_runs_on_cpu_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    main(["bench", "--repeats", "1", "--warmup", "0", "--batch", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert "No GPU" in out and "images/s" in out
    data = json.loads(path.read_text())
    assert data["model"] == "mage_vit_tiny_test"
    for r in data["results"]:
        assert r["median_ms"] > 0 and r["images_per_s"] > 0 and r["tflops"] > 0


def test_flop_counts_match_the_spec():
    """MAGE_SPEC.md: tokenizer ~129 and decoder ~187 GFLOP/image; a generation step ~78
    (MAGE-B) and ~217 (MAGE-L) GFLOP/image."""
    assert abs(tokenizer_flops(MAGE_B) / 1e9 - 129) < 1
    assert abs(detokenizer_flops(MAGE_B) / 1e9 - 187) < 1
    assert abs(flops_per_image(MAGE_B, SEQ_LEN) / 1e9 - 78) < 1
    assert abs(flops_per_image(MAGE_L, SEQ_LEN) / 1e9 - 217) < 1
