"""The siamese network of the proxy task (paper, section 2, Fig. 2): one
:class:`~kidneyssl.models.encoder.DenseEncoder` applied to both kidney crops (shared weights),
global average pooling of the 1/16 bottleneck, and a small projection to an embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kidneyssl.config import ModelConfig
from kidneyssl.models.encoder import DenseEncoder, _init_weights

__all__ = ["SiameseNet"]


class SiameseNet(nn.Module):
    """Two branches with shared weights: ``forward(a, b) -> (emb_a, emb_b)``.

    ``embed(x)`` maps (B, in_channels, Z, Y, X) (sizes multiples of 16; the paper's crops are
    64 x 112 x 112) to (B, embedding_dim) embeddings: encoder -> global average pool of the
    bottleneck -> Linear -> ReLU -> Linear. The encoder is at attribute ``encoder`` (state-dict
    prefix ``encoder.``) so that :func:`kidneyssl.models.transfer.load_encoder` can move it into
    :class:`~kidneyssl.models.unet.DenseUNet3D`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = DenseEncoder(cfg)
        width = self.encoder.bottleneck_channels
        self.projection = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, cfg.embedding_dim)
        )
        _init_weights(self.projection)

    def embed(self, x: Tensor) -> Tensor:
        """(B, embedding_dim) embedding of a batch of crops."""
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
