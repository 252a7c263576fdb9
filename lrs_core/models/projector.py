"""The ``mlp2x_gelu`` projector from vision-tower features to the LLM's embedding space."""

from __future__ import annotations

from torch import nn


class Mlp2xGelu(nn.Sequential):
    """Linear(C -> D), GELU, Linear(D -> D), as LLaVA's ``mlp2x_gelu`` (spec §0).

    It is an ``nn.Sequential`` so its parameter names (``0.weight``, ``2.weight``) match the
    reference's ``mm_projector.mlp_projector.{0,2}.*`` one-to-one.

    Args:
        vision_width: C, width of the vision-tower features.
        hidden_size: D, the LLM's hidden size.
    """

    def __init__(self, vision_width: int, hidden_size: int) -> None:
        super().__init__(
            nn.Linear(vision_width, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.vision_width = vision_width
        self.hidden_size = hidden_size
