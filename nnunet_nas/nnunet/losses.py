"""Segmentation losses nnU-Net does not have, used by a search in place of nnU-Net's Dice + CE.

:class:`SoftJaccardLoss`: SCNAS's Jaccard distance (Kim et al., MICCAI 2019), ``1 - mean_c (I_c + s) / (U_c + s)``
with softmax probabilities ``p`` and one-hot targets ``g``, ``I_c = sum p_c g_c`` and ``U_c = sum p_c + sum g_c - I_c``
over the batch and the voxels (nnU-Net's ``batch_dice`` convention; per sample otherwise), background excluded as in
nnU-Net's Dice. Takes nnU-Net's target layout (label map ``[B, 1, ...]``), so nnU-Net's deep-supervision wrapper
wraps it unchanged.
"""

import torch
from torch import nn


class SoftJaccardLoss(nn.Module):
    def __init__(self, batch_dice: bool = True, smooth: float = 1e-5, do_bg: bool = False):
        super().__init__()
        self.batch_dice, self.smooth, self.do_bg = batch_dice, smooth, do_bg

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), 1)
        onehot = torch.zeros_like(probs).scatter_(1, target.long(), 1.0)
        if not self.do_bg:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        axes = [0] + list(range(2, probs.dim())) if self.batch_dice else list(range(2, probs.dim()))
        inter = (probs * onehot).sum(axes)
        union = probs.sum(axes) + onehot.sum(axes) - inter
        return 1.0 - ((inter + self.smooth) / (union + self.smooth)).mean()
