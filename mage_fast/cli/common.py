"""What several subcommands share: the model flags, flags made from config fields, argument types.

How the command line checks its numbers (one scheme for every subcommand): every numeric flag
has an argparse type made by `number` from a validation.Numbers rule, so a bad value is a usage
error naming the flag (exit code 2) before any work. A command that builds a config dataclass
(train, sample) makes its flags from the config's fields with `add_setting`, which takes each
flag's default, type and choices from the field's declaration (mage_fast.settings): the rule
is written once, beside the field, and the config checks it again for Python callers. What
only the config can check (rules between fields, e.g. warmup_epochs <= epochs) surfaces as
`mage-fast CMD: <the config's message>`. Commands without a config use the shared rules
directly (positive_int, non_negative_float, ... below; validation.NUM_ITER and friends).

Every --device flag has the type `device` (add_device): cpu, cuda or cuda:N that this machine
has, else a usage error. --model (add_model_args), when not given, is read off the checkpoint
(for train: the one it resumes) or a --tokens cache's index (resolve_model, which cli.main calls
before the command runs).
"""
import argparse
import dataclasses
import json
import logging
import os

from ..checkpoint import model_of_file
from ..configs import CONFIGS
from ..distributed import DEVICES, check_device
from ..model_settings import ModelSettings
from ..validation import COUNT, INTEGER, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Numbers

log = logging.getLogger("mage_fast")
DEVICE_HELP = f"{DEVICES} (default: cuda if available)"
TORCHRUN_DEVICE_HELP = DEVICE_HELP[:-1] + "; under torchrun each process takes the GPU of its local rank)"


class ModelDefault(str):
    """--model's default, told apart from the same name given on the command line: resolve_model
    replaces it by the size the files say."""


SKIP_UNREADABLE_HELP = ("leave out files of the image folder that are not readable images, with a warning "
                        "that counts them (default: refuse them before any work, naming the first few)")
MODEL_HELP = {
    "model": "model size (default: read off --ckpt, or for train the checkpoint it resumes or its --tokens "
             "cache; else %(default)s)",
    "impl": "fast module (Triton/CUDA kernels) or the pure-PyTorch reference (default: %(default)s)",
    "ckpt": "official MAGE checkpoint (mage-vit{b,l}-1600.pth); without it, random weights",
    "vqgan_ckpt": "tokenizer checkpoint (vqgan_jax_strongaug.ckpt), if --ckpt lacks vqgan.* keys",
}


def number(rule: Numbers):
    """An argparse type: the flag's text as rule.kind, or a usage error unless `rule` allows it."""
    def parse(text):
        if text in rule.words:
            return text
        try:
            value = rule.kind(text)
        except ValueError:
            value = None
        if value is None or not rule.allows(value):  # also refuses nan and inf
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value
    parse.__name__ = str(rule)  # argparse names the type in its messages
    return parse


integer = number(INTEGER)
positive_int = number(COUNT)
non_negative_int = number(NON_NEGATIVE_INT)
non_negative_float = number(NON_NEGATIVE)
positive_float = number(POSITIVE)


def add_setting(parser, config, name: str, help: str, **kwargs):
    """The flag --NAME (underscores as dashes) of field `name` of the config dataclass `config`:
    required if the field has no default, else its default; a number's rule as its type, a
    choice's options as its choices; a bool field a switch (--NAME, or --no-NAME where the
    default is True). kwargs go to add_argument."""
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    flag = "--" + name.replace("_", "-")
    if field.default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs.setdefault("default", field.default)
    if field.type is bool:
        kwargs["action"] = "store_false" if field.default else "store_true"
        flag = "--no-" + flag[2:] if field.default else flag
    if field.metadata.get("numbers"):
        kwargs.setdefault("type", number(field.metadata["numbers"]))
    if field.metadata.get("choices") is not None:
        kwargs.setdefault("choices", sorted(field.metadata["choices"]))
    parser.add_argument(flag, dest=name, help=help, **kwargs)


def add_model_args(parser):
    """--model, --impl, --ckpt, --vqgan-ckpt: the fields of ModelSettings."""
    for name, help in MODEL_HELP.items():
        extra = {"metavar": "PATH"} if "ckpt" in name else {}
        if name == "model":
            extra["default"] = ModelDefault(ModelSettings.model)
        add_setting(parser, ModelSettings, name, help, **extra)


def resolve_model(args):
    """Where --model was not given (add_model_args): the size of the checkpoint a training run
    resumes from (--resume, or OUT's last), else of --ckpt's tensors, else the one a --tokens
    cache was made with, else the default. A file that says nothing is left to the load to
    report."""
    if not isinstance(getattr(args, "model", None), ModelDefault):
        return
    for path, read in ((resumed_file(args), model_of_file), (args.ckpt, model_of_file),
                       (getattr(args, "tokens", None), cache_model)):
        found = path and read(path)
        if found:
            if found != args.model:
                log.info("model %s, read off %s", found, path)
            args.model = found
            return
    args.model = str(args.model)


def resumed_file(args):
    """The checkpoint train's --resume names (auto: OUT's last, where there is one)."""
    from ..runs.state import LAST
    resume = getattr(args, "resume", None)
    if resume == "auto" and getattr(args, "out", None):
        resume = os.path.join(args.out, LAST)
    return resume if resume not in (None, "auto", "none") and os.path.isfile(resume) else None


def cache_model(path: str):
    """The model size a token cache's index records (None where it records none, or is unreadable)."""
    from ..training.token_cache import INDEX
    try:
        with open(os.path.join(path, INDEX)) as f:
            model = json.load(f).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    return model if model in CONFIGS else None


def device(text):
    """An argparse type: a device name distributed.check_device accepts, or a usage error."""
    try:
        return check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_device(parser, torchrun: bool = False):
    """--device, checked by `device`; torchrun: the command runs under torchrun too."""
    parser.add_argument("--device", type=device, help=TORCHRUN_DEVICE_HELP if torchrun else DEVICE_HELP)


def config_from_args(config, args):
    """The config dataclass `config` of the parsed arguments (its fields are their dests)."""
    return config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config)})
