"""What every ``edgel2`` command shares: the group (where every expected failure becomes one
line and an exit code), older option spellings, and the options and parameter types used by
several commands."""
from __future__ import annotations

import sys
from typing import Any

import click

from edgel2 import __version__
from edgel2.backend import BACKENDS
from edgel2.config import DEFAULT_IMAGE_SIZE, TrainConfig, check_name, parse_devices
from edgel2.errors import EdgeL2Error, OptionError, missing_extra

DEFAULTS = TrainConfig()
FINETUNE = TrainConfig.finetune()
NON_NEGATIVE = click.FloatRange(min=0)
# Older spellings of options, one word per meaning now: still accepted, with a one-line note.
RENAMED_OPTIONS = {
    "infer": {"--output": "--out", "--format": "--out-format", "--precision": "--compute-dtype"},
    "export": {"--batch": "--fixed-batch", "--calib": "--int8-images",
               "--calib-method": "--int8-method", "--quantize": "--precision"},
    "train": {"--precision": "--compute-dtype"},
    "benchmark": {"--formats": "--format", "--json": "--out"},
}


def renamed(args: list[str]) -> list[str]:
    """``args`` with the older spellings of options (:data:`RENAMED_OPTIONS`) replaced, and a
    note on stderr for each one.

    Examples:
        >>> renamed(["infer", "x.png", "--output=r.json", "--format", "json"])
        ['infer', 'x.png', '--out=r.json', '--out-format', 'json']
    """
    command = next((a for a in args if not a.startswith("-")), "")
    renames = RENAMED_OPTIONS.get(command, {})
    out = []
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in renames:
            click.echo(f"edgel2: note: {command} {name} is now {renames[name]}; the old "
                       "spelling still works for now", err=True)
            arg = renames[name] + eq + value
        out.append(arg)
    return out


def default_of(function: Any, parameter: str) -> Any:
    """The default of ``function``'s ``parameter``: what an option shows and passes when it
    is not given, read from the library function it reaches, so the two cannot differ.

    Examples:
        >>> def classify(paths, top_k=1): ...
        >>> default_of(classify, "top_k")
        1
    """
    import inspect

    return inspect.signature(function).parameters[parameter].default


def plural(count: int, noun: str, plural: str = "") -> str:
    """``1 image``, ``2 images`` (``plural``: a noun's irregular plural).

    Examples:
        >>> plural(1, "image"), plural(1000, "image"), plural(2, "copy", "copies")
        ('1 image', '1,000 images', '2 copies')
    """
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def as_flags(group: click.Group, args: list[str], message: str, leading: bool) -> str:
    """A library message as the command line says it: each argument the library names in
    backticks (```force```), and with ``leading`` an argument that starts the message
    (``max_body_mb must be ...``), shown as the option that sets it (``--force``,
    ``--max-body-mb``) when the command being run has one; other backticks dropped.

    Examples:
        >>> @click.command()
        ... @click.option("--max-body-mb", type=float)
        ... @click.option("--force", is_flag=True)
        ... def serve(max_body_mb, force): ...
        >>> group = click.Group(commands={"serve": serve})
        >>> as_flags(group, ["serve"], "max_body_mb must be a positive number", True)
        '--max-body-mb must be a positive number'
        >>> as_flags(group, ["serve"], "m.onnx exists; pass `force` to overwrite (`name`)", False)
        'm.onnx exists; pass --force to overwrite (name)'
    """
    import re

    command = group.commands.get(next((a for a in args if not a.startswith("-")), ""))
    options = [] if command is None else [p for p in command.params if isinstance(p, click.Option)]
    # an argument is named as the option's parameter (`output`) or its long flag (`out`)
    flags = {**{o.lstrip("-").replace("-", "_"): o for p in options for o in p.opts
                if o.startswith("--")},
             **{p.name: p.opts[0] for p in options}}
    message = re.sub(r"`([a-z_]+)`", lambda m: flags.get(m.group(1), m.group(1)), message)
    argument, space, rest = message.partition(" ")
    return f"{flags[argument]} {rest}" if leading and space and argument in flags else message


class _Cli(click.Group):
    """The one place where every expected failure becomes one line on stderr and a documented
    exit code: 2 for bad options (as argparse and click do), 1 for bad input, a failed run or
    a missing optional dependency (the line names what to install), 3 when ``infer`` could
    not classify some images, 4 when finished results could not be written where asked (they
    go to stdout instead), 130 for Ctrl-C."""

    def main(self, args=None, prog_name=None, **kwargs):  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            args = renamed(list(sys.argv[1:] if args is None else args))
            code = super().main(args, prog_name or "edgel2", **kwargs)
        except click.UsageError as e:
            click.echo(f"edgel2: error: {e.format_message()}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as e:  # a command's heavy import, on an install without it
            error = missing_extra(e)
            if error is None:
                raise
            click.echo(f"edgel2: error: {error}", err=True)
            sys.exit(error.exit_code)
        except EdgeL2Error as e:
            message = as_flags(self, args, str(e), leading=isinstance(e, OptionError))
            click.echo(f"edgel2: error: {message}", err=True)
            sys.exit(e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("edgel2: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"],
                                         "max_content_width": 100})
@click.version_option(__version__, prog_name="edgel2")
def cli() -> None:
    """edgel2: train an L2-regularized ResNet-18 on CIFAR-10 or your own photos, export it,
    deploy it.

    \b
    Your own photos (photos/<class>/*.jpg; later commands remember the data):
      edgel2 train --data photos --pretrained --epochs 10 --name photos --out runs/train/photos
      edgel2 eval runs/train/photos/model.keras
      edgel2 export runs/train/photos/model.keras --format onnx,tflite --precision int8
      edgel2 infer new-photos/ --model runs/train/photos/export/photos-int8.onnx --save annotated/
      edgel2 serve --model runs/train/photos/export/photos-int8.onnx

    \b
    Quick start on a CPU (what scripts/quickstart.sh runs; a few minutes on 2 cores):
      edgel2 train --width 16 --epochs 4 --subset 10000 --batch-size 128 --lr 0.2 \\
          --test-subset 2000 --name quickstart --out runs/train/quickstart
      edgel2 eval runs/train/quickstart/model.keras
      edgel2 export runs/train/quickstart/model.keras --format all --precision all --allow-drop
      edgel2 infer photos/ --model runs/train/quickstart/export/quickstart-int8.onnx --top-k 2
      edgel2 serve --model runs/train/quickstart/export/quickstart-int8.onnx
    """


DATA_HELP = ("Image folder (train/<class>/ with test/<class>/, and val/<class>/ as a "
             "validation split; or <class>/ alone) or cifar-10-batches-py/.")
RECORDED_DATA = ("Default: the data the model was trained on (its run's config.json, or the "
                 "file's metadata); for a model with no record, $EDGEL2_DATA, else CIFAR-10.")


def data_options(training: bool):
    """--data, --test-split and --image-size: for training, or for a command on a model
    (which defaults to the data the model remembers)."""
    def decorate(f):
        f = click.option(
            "--image-size", type=click.IntRange(min=1), default=None,
            help=(f"Resize every image to N x N. Default: as stored when all images have one "
                  f"size; a folder of mixed sizes is resized to the pretrained weights' input "
                  f"({DEFAULT_IMAGE_SIZE}) or {DEFAULT_IMAGE_SIZE}." if training else
                  "Resize every image to N x N (default: the model's input size)."))(f)
        f = click.option("--test-split", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                         default=DEFAULTS.test_split if training else None,
                         show_default=training,
                         help="Test fraction of a folder of bare class subfolders (seeded, "
                              "class-balanced)" + ("." if training else
                                                   "; default: the run's."))(f)
        f = click.option("--data", type=str, default=None,
                         help=DATA_HELP + (" Default: $EDGEL2_DATA, else CIFAR-10."
                                           if training else " " + RECORDED_DATA))(f)
        return f
    return decorate


def backend_option(f):
    return click.option("--backend", type=click.Choice(BACKENDS), default=None,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow).")(f)


def checked_name(ctx, param, value):
    """``--name``, checked by the one rule (edgel2.config.check_name)."""
    if value is None:
        return None
    try:
        return check_name(value)
    except OptionError as e:
        raise click.BadParameter(str(e), ctx, param) from None


def devices_option(ctx, param, value):
    """``--devices``, checked by the one parser (edgel2.config.parse_devices)."""
    try:
        parse_devices(value)
    except OptionError as e:
        raise click.BadParameter(str(e).removeprefix("`devices` "), ctx, param) from None
    return value



class IntList(click.ParamType):
    """Whole numbers >= 1, comma-separated (the option may also be repeated: see flat)."""

    name = "N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return list(value)
        try:
            numbers = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of whole numbers", param, ctx)
        if not numbers or min(numbers) < 1:
            self.fail(f"{value!r} needs numbers >= 1", param, ctx)
        return numbers


class ChoiceList(click.ParamType):
    """Names from ``choices``, comma-separated. With ``multiple=True`` and ``callback=flat``
    the option may also be repeated: every list option of the CLI takes both
    ``--formats onnx,tflite`` and ``--formats onnx --formats tflite``. ``aliases`` maps older
    spellings to their one name (not listed in the help)."""

    def __init__(self, choices, aliases: dict[str, str] | None = None, single: bool = False):
        self.choices = list(choices)
        self.aliases = aliases or {}
        self.single = single  # one name, not a list
        self.name = "[" + "|".join(self.choices) + "]" + ("" if single else ",...")

    def get_metavar(self, param, ctx=None) -> str:
        return self.name

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        parts = [str(value)] if self.single else str(value).split(",")
        names = [self.aliases.get(n, n) for n in (v.strip() for v in parts) if n]
        unknown = [n for n in names if n not in self.choices]
        if unknown or not names:
            self.fail(f"{unknown[0] if unknown else value!r} is not one of "
                      f"{', '.join(self.choices)}", param, ctx)
        return names[0] if self.single else names


def flat(ctx, param, value):
    """A repeated list option (a tuple of lists) as one list, in order, without repeats."""
    flat = [v for group in value or () for v in (group if isinstance(group, list) else [group])]
    return list(dict.fromkeys(flat))


class CheckCount(click.ParamType):
    """A number of test images, or ``all`` for the whole test split (None)."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or str(value).lower() == "all":
            return None
        try:
            count = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a whole number nor 'all'", param, ctx)
        if count < 0:
            self.fail(f"{count} is negative", param, ctx)
        return count



class ProgressBars:
    """A ``(done, total)`` callback that draws one click progress bar per pass on stderr when
    it is a terminal, and nothing otherwise (a log or a pipe gets no bars and no escapes)."""

    def __init__(self, label: str):
        self.label = label
        self.bar: Any = None  # a click progress bar, once the first pass starts
        self.shown = sys.stderr.isatty()
        self.total = 0  # of the last pass: how many there were to do

    def __call__(self, done: int, total: int) -> None:
        self.total = total
        if not self.shown:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)
        if done >= total:
            self.bar.__exit__(None, None, None)
            self.bar = None

