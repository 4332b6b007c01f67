"""Small building blocks shared by several methods."""

from __future__ import annotations

from torch import Tensor, nn


class Bottleneck(nn.Module):
    """``up(act(down(x)))``, optionally plus ``x`` (AIM's Adapter; Houlsby/parallel adapters).

    ``zero_up`` zeroes the up projection so the branch outputs 0 at step 0 and the adapted
    model starts exactly as the image model.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        act: type[nn.Module] = nn.GELU,
        skip: bool = False,
        zero_up: bool = True,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.down = nn.Linear(dim, hidden)
        self.act = act()
        self.up = nn.Linear(hidden, dim)
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        if zero_up:
            nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.up(self.act(self.down(x)))
        return x + branch if self.skip else branch
