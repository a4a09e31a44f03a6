"""Typed settings: the fields of a command's configuration (a frozen dataclass: training.TrainConfig,
finetune.FinetuneConfig, sampling.SampleConfig, model_settings.ModelSettings) with what each
allows, declared once beside the field.

A config checks its fields when it is built (`check_settings` in its __post_init__): a
ValueError names each field that is wrong and what it must be. That is the guard for Python
callers. The command line makes its flags from the same fields (cli.common.add_setting): a number's rule
becomes the flag's argparse type and a choice its `choices`, so the CLI refuses bad input
before any work with the rule the library holds, never a copy of it.
"""
import argparse
import dataclasses
import os
import typing
from typing import Optional

from .validation import Numbers


def setting(default=dataclasses.MISSING, numbers: Optional[Numbers] = None, choices=None, path: bool = False):
    """A config field: its default (none: the field is required) and what it allows: the
    numbers of a rule, one of `choices`, or a path (a str; an os.PathLike becomes its str). A
    field whose default is None also takes None: chosen later, or off."""
    return dataclasses.field(default=default, metadata={"numbers": numbers, "choices": choices, "path": path})


def _plain_type(annotation):
    """str for Optional[str], and so on."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation


def check_settings(config):
    """Check every field of a config against its declaration (see `setting`) and its annotation
    where that is str or bool; one ValueError names every field that is wrong. Paths are
    stored as str: a checkpoint keeps a run's settings, and a checkpoint holds plain values only."""
    bad = []
    for f in dataclasses.fields(config):
        try:
            _check_field(config, f)
        except ValueError as e:
            bad.append(str(e))
    if bad:
        raise ValueError("; ".join(bad))


def _check_field(config, f):
    value, meta = getattr(config, f.name), f.metadata
    if value is None and f.default is None:
        return
    if meta.get("path"):
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise ValueError(f"{f.name} must be a path, got {value!r}")
        object.__setattr__(config, f.name, os.fspath(value))  # frozen: set once, while it is built
    elif _plain_type(f.type) in (str, bool) and not isinstance(value, _plain_type(f.type)):
        raise ValueError(f"{f.name} must be a {_plain_type(f.type).__name__}, got {value!r}")
    if meta.get("numbers"):
        meta["numbers"].check(f.name, value)
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ValueError(f"{f.name} must be one of {', '.join(sorted(meta['choices']))}, got {value!r}")


def as_namespace(config, **extra) -> argparse.Namespace:
    """A run's settings (and `extra` values) as the `args` entry of a checkpoint: the official
    files pickle their argparse arguments, which the official loader and our read_file accept."""
    return argparse.Namespace(**{**dataclasses.asdict(config), **extra})
