"""Command output quoted in the README and docs/*.md, checked against the command itself.

An excerpt is a fenced block right below a marker comment that names the command:

    <!-- output: mlabench kv --model deepseek-v3 --seq-len 131072 -->
    ```text
    ...what the command prints on stdout...
    ```

The command runs as `python -m mlabench ...` in the repository root, its terminal
`WIDTH` columns wide, and its stdout must equal the block (trailing spaces and blank lines
aside). A block with a line holding only `...` is an excerpt with cuts: each stretch between
cuts must appear in the output, in order. Only deterministic output belongs under a marker
(tables from the analytic model, `--dry-run` sizing, help text): no timings, no dates.

To regenerate the excerpts after a deliberate change of output (an excerpt with cuts gets its
first and last stretches redrawn from the output's head and tail; check the middle by hand):

    python tests/docs_excerpts.py --write
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 100  # terminal columns the excerpts are rendered at
MARKER = re.compile(r"^<!-- output: (?P<command>.+?) -->\s*$")
CUT = "..."


@dataclass(frozen=True)
class Excerpt:
    path: Path
    line: int  # 1-based line of the marker
    command: str
    body: list[str]  # the block's lines
    span: tuple[int, int]  # 0-based [first, last) lines of the block's body in the file

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def excerpts(path: Path) -> list[Excerpt]:
    """Every marked excerpt of one Markdown file (a marker not followed by a fence is an error)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    for i, line in enumerate(lines):
        match = MARKER.match(line)
        if not match:
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise ValueError(f"{path.name}:{i + 1}: an output marker must sit right above a fenced block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{path.name}:{i + 1}: the fenced block below the marker is not closed")
        found.append(Excerpt(path, i + 1, match["command"], lines[i + 2:end], (i + 2, end)))
    return found


def run(command: str) -> str:
    """stdout of a documented `mlabench ...` command, as a WIDTH-column terminal shows it."""
    argv = shlex.split(command)
    if argv[0] != "mlabench":
        raise ValueError(f"only mlabench commands are checked, not {argv[0]!r}")
    env = {**os.environ, "COLUMNS": str(WIDTH), "LINES": "50", "NO_COLOR": "1", "TERM": "dumb",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for name in ("FORCE_COLOR", "TRITON_INTERPRET"):  # what a user's shell has: tests set the interpreter
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "mlabench", *argv[1:]], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"`{command}` exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def normalized(text: str | list[str]) -> list[str]:
    lines = text.splitlines() if isinstance(text, str) else list(text)
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def mismatch(excerpt: Excerpt, output: str) -> str | None:
    """None when the output agrees with the excerpt, else what differs (for the failure message)."""
    got, want = normalized(output), normalized(excerpt.body)
    if CUT not in (line.strip() for line in want):
        if got == want:
            return None
        return "\n".join(["the command now prints:", *got])
    at = 0
    stretch: list[str] = []
    for line in [*want, CUT]:
        if line.strip() != CUT:
            stretch.append(line)
            continue
        if stretch:
            hit = next((i for i in range(at, len(got) - len(stretch) + 1) if got[i:i + len(stretch)] == stretch), None)
            if hit is None:
                return "\n".join(["not found in the output, in order:", *stretch, "", "output:", *got])
            at = hit + len(stretch)
        stretch = []
    return None


def regenerated(body: list[str], output: list[str]) -> list[str]:
    """The excerpt redrawn from the output: all of it when uncut; with cuts, the first stretch
    from the output's head and the last from its tail, the stretches between kept as they are."""
    body = normalized(body)
    cuts = [i for i, line in enumerate(body) if line.strip() == CUT]
    if not cuts:
        return output
    head, tail = cuts[0], len(body) - cuts[-1] - 1
    return output[:head] + body[cuts[0]:cuts[-1] + 1] + (output[len(output) - tail:] if tail else [])


def write() -> int:
    """Rewrite every excerpt that no longer matches from its command's output; returns how many."""
    changed = 0
    for path in documents():
        lines = path.read_text(encoding="utf-8").splitlines()
        for ex in reversed(excerpts(path)):  # bottom up: earlier spans keep their line numbers
            output = run(ex.command)
            if mismatch(ex, output) is None:
                continue
            lines[ex.span[0]:ex.span[1]] = regenerated(ex.body, normalized(output))
            changed += 1
            print(f"{ex.name}: rewritten from `{ex.command}`")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/docs_excerpts.py --write")
    print(f"{write()} excerpt(s) rewritten")
