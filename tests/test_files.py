"""Files the project writes: atomic, and strict JSON (no NaN or Infinity, which jq, browsers and
RFC 8259 parsers refuse)."""
import json
import math

import numpy as np
import pytest

from helpers import strict_json
from mage_fast.files import append_json_line, to_json, write_json


def test_non_finite_figures_become_null_at_any_depth():
    obj = {"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf, "d": (2, math.nan)}], "e": np.float64("nan"),
           "f": 3, "g": "NaN", "h": None, "i": True}
    assert strict_json(to_json(obj)) == {"a": None, "b": [1.5, None, {"c": None, "d": [2, None]}], "e": None,
                                         "f": 3, "g": "NaN", "h": None, "i": True}


def test_what_json_cannot_hold_is_an_error_unless_converted():
    with pytest.raises(TypeError):
        to_json({"x": object()})
    assert strict_json(to_json({"x": np.float32(0.5)}, default=float)) == {"x": 0.5}


def test_the_strict_parser_refuses_nan():
    with pytest.raises(ValueError):
        strict_json(json.dumps({"x": math.nan}))


def test_write_json_and_json_lines(tmp_path):
    write_json(tmp_path / "a.json", {"peak": math.nan, "ms": [1.0]})
    assert strict_json((tmp_path / "a.json").read_text()) == {"peak": None, "ms": [1.0]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left
    for loss in (1.0, math.inf):
        append_json_line(tmp_path / "log.jsonl", {"loss": loss})
    assert [strict_json(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()] == \
        [{"loss": 1.0}, {"loss": None}]
