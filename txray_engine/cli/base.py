"""The ``txray`` group, its error handling and shared helpers."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import click

from ..errors import Terminated, TxRayError
from ..store.outputs import os_advice

SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: int) -> str:
    f = float(n)
    for u in SIZE_UNITS:
        if f < 1024 or u == SIZE_UNITS[-1]:
            return f"{f:.1f} {u}" if u != "B" else f"{int(f)} B"
        f /= 1024
    return str(n)


#: ``--gguf-file``: a model directory's GGUF weights (collect, layers, prune).
gguf_option = click.option("--gguf-file", help="GGUF weights file inside the model directory.")

#: ``--by``: the neuron distributions come from activation mass or from selection counts.
by_option = click.option("--by", type=click.Choice(["mass", "count"]), default="mass",
                         show_default=True,
                         help="Distributions from activation mass or from counts.")

#: ``--min-count``: cells seen fewer times are left out of the distributions.
min_count_option = click.option("--min-count", default=1, show_default=True,
                                type=click.IntRange(min=1),
                                help="Ignore (neuron, feature) cells seen fewer times.")

#: ``--min-neuron-count``: neurons selected fewer times count as dead in comparisons.
min_neuron_count_option = click.option(
    "--min-neuron-count", default=1, show_default=True, type=click.IntRange(min=1),
    help="Neurons selected fewer times count as dead (a distance from a handful of positions "
         "is mostly noise).")


#: What a command interrupted by Ctrl-C leaves, said after "interrupted".
INTERRUPTED = {
    "collect": ": the stage keeps its last flush; run the same command with --resume (in place "
               "of any --overwrite) to go on",
    "merge": ": run the merge again, with --overwrite where it had created the stage",
    "demo": ": run it again with the same --out (it starts over)",
}


class TxRayGroup(click.Group):
    """Turns engine errors, unusable files and a command's usage errors into one line on stderr
    and exit code 2 (``--debug`` shows tracebacks)."""

    def invoke(self, ctx):
        # SIGTERM (a batch scheduler's stop) ends a command as Ctrl-C does, through its clean-up
        # (no .partial file left); a collection takes it between batches and flushes first
        def terminate(signum, frame):
            raise Terminated(signum)
        main_thread = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGTERM, terminate) if main_thread else None
        try:
            return self._invoke(ctx)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TxRayError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what is left, and how to go on
            if ctx.params.get("debug"):
                raise
            sub = ctx.invoked_subcommand
            # a flush stopped inside Zarr's event loop leaves tasks pending, which asyncio's
            # logger lists at exit ("Task was destroyed but it is pending!"): not news here
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            signum = getattr(e, "signum", signal.SIGINT)
            what = "terminated" if signum == signal.SIGTERM else "interrupted"
            left = (": the stage was flushed after its last whole batch; run the same command "
                    "with --resume (in place of any --overwrite) to go on"
                    if getattr(e, "flushed", False) else
                    INTERRUPTED.get(sub, ""))
            click.echo(f"\n{what}{left}", err=True)
            ctx.exit(128 + signum)
        except BrokenPipeError:  # `txray ... | head`: the reader has all it wanted
            # stdout is gone: point it at /dev/null so the interpreter's final flush is quiet,
            # and end as a Unix tool killed by SIGPIPE does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(128 + signal.SIGPIPE)
        except OSError as e:  # a file the user named cannot be read or written
            if ctx.params.get("debug"):
                raise
            where = f" {e.filename!r}" if e.filename else ""
            click.echo(f"error: cannot use{where}: {e.strerror or e}; {os_advice(e)}", err=True)
            ctx.exit(2)
        except click.UsageError as e:  # a bad or missing option of a command
            if ctx.params.get("debug"):
                raise
            if type(e).__name__ == "NoArgsIsHelpError":  # (`txray corpus`: its help, as bare
                click.echo(e.ctx.get_help(), err=True)  # `txray` gives; click >= 8.2)
                ctx.exit(2)
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
            ctx.exit(2)


@click.group(cls=TxRayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors (before the "
                                            "command: txray --debug collect ...).")
@click.version_option(package_name="txray_engine")
def main(debug: bool) -> None:
    """Neuron × feature statistics of PyTorch models (TX-Ray), streamed into a Zarr store."""


@main.command("help")
@click.argument("command", required=False)
@click.pass_context
def help_command(ctx, command):
    """Show the help of txray, or of one command (as COMMAND --help does)."""
    if command is None:
        click.echo(main.get_help(ctx.parent))
        return
    cmd = main.get_command(ctx, command)
    if cmd is None:
        raise click.UsageError(f"no command {command!r}; the commands: "
                               f"{', '.join(main.list_commands(ctx))}")
    with click.Context(cmd, info_name=command, parent=ctx.parent) as sub:
        click.echo(cmd.get_help(sub))


def parse_k(value: str):
    if value == "all":
        return "all"
    try:
        k = int(value)
    except ValueError:
        raise click.BadParameter("use a positive integer or 'all'") from None
    if k < 1:
        raise click.BadParameter("use a positive integer or 'all'")
    return k


def format_features(view, neuron: int, n: int, by: str = "mass") -> str:
    """``'feature' share%, …`` of a neuron's ``n`` strongest features in a stream view."""
    shown = view.vocab.shown
    return ", ".join(f"{shown(f)!r} {v:.0%}"
                     for f, v in view.top_features(neuron, n, by, share=True))
