"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP threads waiting for
    each other can make a step ~10x slower than one thread alone."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    """@pytest.mark.cuda tests need a CUDA GPU: skipped without one (bench/gpu_check.py runs
    them with `pytest -m cuda` where there is one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def help_groups(out: str) -> dict:
    """{heading: [key, ...]} of a --help's settings, in their order ("" for rows before any
    heading); each row of configs.print_help is '  --key=value  type  help'."""
    groups, heading = {}, None
    for line in out.split("settings (--key=value, type, what it does):", 1)[1].splitlines():
        if line.startswith("  --"):
            groups.setdefault(heading or "", []).append(line.split("=", 1)[0].strip()[2:])
        elif line.endswith(":") and not line.startswith(" "):
            heading = line[:-1]
    return groups
