"""Shared test setup, run first in every pytest process (each pytest-xdist worker included).

Triton kernels run on the CPU through Triton's interpreter when no CUDA device
is present; the variable must be set before triton is first imported, which
`import torch` alone does not do.

Under pytest-xdist (`-n auto --dist loadgroup`, the README's test command) each worker
is a process of its own. It gets one torch thread: two workers at torch's default
thread count would oversubscribe a 2-core runner and make OpenMP spin against itself.
Tests marked `xdist_group` run on one worker, in turn: the process-heavy modules (Ray,
Chromium, the offline kernel compile, the tensor-parallel ranks: group "processes") so
that they never share the cores with each other, and tests sharing an expensive set-up
(the end-to-end gate's sweeps, inductor's start) so that it is built once.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


_GROUP_LOST = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own hook has named each test's group
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Note the tests whose `xdist_group` a pytest/pytest-xdist pair dropped: it does so silently
    (pytest-xdist marks a group by a suffix on the node id, which some pytest releases ignore)."""
    if getattr(config.option, "loadgroup", False):
        for item in items:
            if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid:
                item.stash[_GROUP_LOST] = True


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.stash.get(_GROUP_LOST, False):
        pytest.fail("--dist loadgroup ignored this test's xdist_group mark: this pytest and pytest-xdist do not "
                    "work together; install the versions pyproject.toml's dev extra names", pytrace=False)
