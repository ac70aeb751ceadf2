"""The siamese network of the proxy task (paper, section 2, Fig. 2): one encoder applied to both
kidney crops (shared weights), global average pooling of the bottleneck, and a small projection to
an embedding.

The encoder is the segmentation network's own (any registered architecture's ``encoder``), so its
weights move into that network by the ``encoder.`` prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kidneyssl.config import ModelConfig
from kidneyssl.models.encoder import init_weights

__all__ = ["SiameseNet"]


class SiameseNet(nn.Module):
    """Two branches with shared weights: ``forward(a, b) -> (emb_a, emb_b)``.

    ``embed(x)`` maps (B, in_channels, Z, Y, X) (sizes multiples of the encoder's downsampling;
    the paper's crops are 64 x 112 x 112) to (B, embedding_dim) embeddings: encoder -> global
    average pool of the bottleneck -> Linear -> ReLU -> Linear. The encoder is at attribute
    ``encoder`` (state-dict prefix ``encoder.``) so that
    :func:`kidneyssl.models.transfer.load_encoder` can move it into the segmentation network.

    Args:
        cfg: a model config: the encoder of its registered network is built (the paper's
            ``SiameseNet(cfg)``).
        encoder, bottleneck_channels: instead of ``cfg``, an encoder module (its output list ends
            with the bottleneck) and the bottleneck's channels.
        embedding_dim: the embedding size (default ``cfg.embedding_dim``).
    """

    def __init__(self, cfg: ModelConfig | None = None, *, encoder: nn.Module | None = None,
                 bottleneck_channels: int | None = None, embedding_dim: int | None = None) -> None:
        super().__init__()
        if (cfg is None) == (encoder is None):
            raise ValueError("give either a model config or an encoder (with its bottleneck channels)")
        if cfg is not None:
            from kidneyssl.models.registry import build_network, network_spec

            network = build_network(network_spec(cfg))
            encoder, bottleneck_channels = network.encoder, int(network.bottleneck_channels)
            embedding_dim = embedding_dim or cfg.embedding_dim
        if bottleneck_channels is None or embedding_dim is None:
            raise ValueError("an encoder needs bottleneck_channels and embedding_dim")
        self.encoder = encoder
        width = int(bottleneck_channels)
        self.projection = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, int(embedding_dim))
        )
        init_weights(self.projection)

    def embed(self, x: Tensor) -> Tensor:
        """(B, embedding_dim) embedding of a batch of crops."""
        assert self.encoder is not None
        bottleneck = self.encoder(x)[-1]
        pooled = torch.flatten(bottleneck.mean(dim=(2, 3, 4)), 1)
        return self.projection(pooled)

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings of both inputs. When shapes match they go through the encoder as one batch
        (same result, one pass, GroupNorm is per-sample)."""
        if a.shape == b.shape:
            emb = self.embed(torch.cat([a, b], dim=0))
            return emb[: a.shape[0]], emb[a.shape[0]:]
        return self.embed(a), self.embed(b)
