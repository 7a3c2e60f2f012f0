"""The CLI's table of contents: every command is wired here explicitly.

Exceptions from the library become one line on stderr and the exit code
DESIGN.md promises (2 bad input, 3 not comparable); MLABENCH_DEBUG=1 shows the
traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from mlabench.errors import MlabenchError

app = typer.Typer(
    name="mlabench",
    help="Benchmark and memory-profile LLM attention variants (MHA, GQA, MQA, DeepSeek MLA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; `argv` lets tests run the CLI in-process."""
    try:
        app(args=argv, prog_name="mlabench")
    except MlabenchError as exc:
        if os.environ.get("MLABENCH_DEBUG") == "1":
            raise
        print(f"mlabench: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
