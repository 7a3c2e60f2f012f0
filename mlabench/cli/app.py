"""The CLI's table of contents: every command is wired here explicitly.

Exceptions become one line on stderr and the exit code the README promises
(2 bad input, 3 not comparable); MLABENCH_DEBUG=1 shows the traceback instead.
The table, in `main`: mlabench's own errors carry their exit code; command-line
parse errors (unknown option, a value of the wrong type) and impossible shapes
are bad input (2); an OSError is the file system refusing (a path that is not a
directory, no permission, a full disk), also 2, since no measurement is wrong.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import typer
import typer.main

import mlabench
from mlabench.cli.ab_cmd import ab
from mlabench.cli.compare_cmd import compare
from mlabench.cli.env_cmd import env
from mlabench.cli.frontier_cmd import frontier
from mlabench.cli.kv_cmd import kv
from mlabench.cli.list_cmd import list_
from mlabench.cli.merge_cmd import merge
from mlabench.cli.report_cmd import report
from mlabench.cli.run_cmd import run
from mlabench.cli.sweep_cmd import sweep
from mlabench.errors import MlabenchError

app = typer.Typer(
    name="mlabench",
    help="Benchmark and memory-profile LLM attention variants (MHA, GQA, MQA, DeepSeek MLA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: rich markup would eat bracketed defaults ("[default: ...]") and box every line.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlabench {mlabench.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Benchmark and memory-profile LLM attention variants (MHA, GQA, MQA, DeepSeek MLA)."""


app.command("sweep")(sweep)
app.command("run")(run)
app.command("list")(list_)
app.command("env")(env)
app.command("kv")(kv)
app.command("frontier")(frontier)
app.command("merge")(merge)
app.command("report")(report)
app.command("compare")(compare)
app.command("ab")(ab)


# Typer re-exports click's BadParameter but not its base class, UsageError, which every parse
# error (unknown option, missing value, wrong type) derives from; take it from the public class.
_ClickUsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _error(message: str, code: int) -> NoReturn:
    print(f"mlabench: error: {message}", file=sys.stderr)
    sys.exit(code)


# Metavars read as words. Options declared without one get the word for their type here, so help
# never shows a Python type such as <list[str]>.
_TYPE_WORDS = {"Path": "PATH", "int": "N", "float": "NUMBER", "bool": "BOOL", "str": "TEXT"}


def _word_metavars(command: Any) -> Any:
    for sub in getattr(command, "commands", {}).values():
        _word_metavars(sub)
    for param in command.params:
        if param.metavar is not None or getattr(param, "is_flag", False):
            continue
        desc = param.type_descriptor
        if param.param_type_name == "argument":  # its name is the word; no type beside it
            param.metavar = param.name.upper()
            param.display_type_rich = lambda ctx: ""
        elif desc.is_choice:
            param.metavar = "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
        else:
            param.metavar = _TYPE_WORDS.get(param.bare_type().removeprefix("list[").removesuffix("]"), "TEXT")
    return command


# One concept, one flag in every command: a spelling that another command (or an older release)
# used gets the flag this one takes.
FLAG_HINTS = {"--preset": "--model", "--output": "--out", "--kv_dtype": "--kv-dtype", "--seq_len": "--seq-len",
              "--num-layers": "--set num_layers=N", "--format": "--json", "--markdown": "--out"}


def _hint(exc: Exception) -> str:
    """For an unknown option: the spelling this command uses, when the option is another's."""
    name = getattr(exc, "option_name", None)
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ != "NoSuchOption" or not name or ctx is None:
        return ""
    flags = {opt for p in ctx.command.params for opt in (*p.opts, *p.secondary_opts)}
    want = FLAG_HINTS.get(name.split("=")[0]) or (name.replace("_", "-") if "_" in name else "")
    return f"; this command spells it {want}" if want and want.split()[0] in flags else ""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; `argv` lets tests run the CLI in-process."""
    from mlabench.config import ShapeError

    debug = os.environ.get("MLABENCH_DEBUG") == "1"
    try:
        command = _word_metavars(typer.main.get_command(app))
        code = command.main(args=argv, prog_name="mlabench", standalone_mode=False)
    except _ClickUsageError as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())  # bare `mlabench`: the help, as a usage answer (exit 2)
            sys.exit(2)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _error(f"{exc.format_message()}{_hint(exc)}{where}", 2)  # type: ignore[attr-defined]
    except MlabenchError as exc:
        if debug:
            raise
        _error(str(exc), exc.exit_code)
    except ShapeError as exc:
        if debug:
            raise
        _error(str(exc), 2)
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}", 2)
    except typer.Abort:
        _error("aborted", 130)
    sys.exit(code if isinstance(code, int) else 0)
