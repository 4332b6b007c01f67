"""Test-wide settings and fixtures."""

import logging

import pytest
import torch

# `make test` runs two pytest workers on two cores; one thread each avoids oversubscription,
# which makes small-tensor tests several times slower.
torch.set_num_threads(1)


@pytest.fixture
def vidadapt_log():
    """The messages logged on vidadapt's logger at INFO and above during the test (its own
    handler: the CLI's setup turns propagation to the root logger, and so caplog, off)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log = logging.getLogger("vidadapt")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield lines
    log.removeHandler(handler)
    log.setLevel(level)
