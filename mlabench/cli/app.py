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
from typing import NoReturn

import typer

import mlabench
from mlabench.cli.ab_cmd import ab
from mlabench.cli.compare_cmd import compare
from mlabench.cli.env_cmd import env
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; `argv` lets tests run the CLI in-process."""
    from mlabench.config import ShapeError

    debug = os.environ.get("MLABENCH_DEBUG") == "1"
    try:
        code = app(args=argv, prog_name="mlabench", standalone_mode=False)
    except _ClickUsageError as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())  # bare `mlabench`: the help, as a usage answer (exit 2)
            sys.exit(2)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _error(f"{exc.format_message()}{where}", 2)  # type: ignore[attr-defined]
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
