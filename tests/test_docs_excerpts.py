"""The README's and docs/*.md's quoted command output still is what the commands print.

Each excerpt sits under an `<!-- output: mlabench ... -->` marker (tests/docs_excerpts.py says
how they are written and regenerated); this test runs every marked command and compares.
"""

from __future__ import annotations

import pytest

from tests.docs_excerpts import CUT, Excerpt, documents, excerpts, mismatch, normalized, regenerated, run

ALL = [ex for path in documents() for ex in excerpts(path)]


def test_the_docs_carry_checked_excerpts() -> None:
    """The kv tables, the dry-run sizing and a help text are among them (a marker lost in an edit shows here)."""
    commands = " | ".join(ex.command for ex in ALL)
    for wanted in ("mlabench kv ", "--kv-dtype fp8_e4m3", "--dry-run", "--help"):
        assert wanted in commands


@pytest.mark.parametrize("excerpt", ALL, ids=[ex.name for ex in ALL])
def test_excerpt_matches_the_command(excerpt: Excerpt) -> None:
    problem = mismatch(excerpt, run(excerpt.command))
    assert problem is None, (f"{excerpt.name}: `{excerpt.command}` no longer prints what the docs quote "
                             f"(regenerate with `python tests/docs_excerpts.py --write`)\n{problem}")


def test_the_comparison_bites() -> None:
    """A changed figure fails an uncut excerpt; a cut excerpt needs its stretches in order."""
    ex = Excerpt(ALL[0].path, 1, "mlabench kv", ["a", "b 1,152 B", "c"], (0, 3))
    assert mismatch(ex, "a\nb 1,152 B  \nc\n\n") is None
    assert mismatch(ex, "a\nb 1,408 B\nc\n") is not None
    cut = Excerpt(ALL[0].path, 1, "mlabench kv", ["a", CUT, "c", "d"], (0, 4))
    assert mismatch(cut, "a\nx\ny\nc\nd\n") is None
    assert mismatch(cut, "c\nd\na\n") is not None and normalized(["", "a ", ""]) == ["a"]
    # Regeneration redraws the first and last stretches from the output, keeps the cut between.
    assert regenerated(["old", CUT, "c", "d"], ["new", "x", "c2", "d2"]) == ["new", CUT, "c2", "d2"]
    assert regenerated(["a", "b"], ["x", "y", "z"]) == ["x", "y", "z"]
