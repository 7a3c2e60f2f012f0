"""The CLI's table of contents: every command is wired here explicitly.

Exceptions from the library become one line on stderr and the exit code
DESIGN.md promises (2 bad input, 3 not comparable); MLABENCH_DEBUG=1 shows the
traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

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
)

app.command("sweep")(sweep)
app.command("run")(run)
app.command("list")(list_)
app.command("env")(env)
app.command("kv")(kv)
app.command("merge")(merge)
app.command("report")(report)
app.command("compare")(compare)
app.command("ab")(ab)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; `argv` lets tests run the CLI in-process."""
    try:
        app(args=argv, prog_name="mlabench")
    except MlabenchError as exc:
        if os.environ.get("MLABENCH_DEBUG") == "1":
            raise
        print(f"mlabench: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
