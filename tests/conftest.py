"""Test-wide settings."""

import torch

# `make test` runs two pytest workers on two cores; one thread each avoids oversubscription,
# which makes small-tensor tests several times slower.
torch.set_num_threads(1)
