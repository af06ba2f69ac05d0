"""Networks shared by the training scripts under ``models/`` (PyTorch; never imported by the
server, which runs their ONNX exports).

* :class:`Branch`: a 3D residual-encoder U-Net trunk (residual blocks, stride-2 downsampling,
  transposed-convolution upsampling, skip connections), returning full-resolution features;
* :class:`LateFusionUNet`: one branch per input contrast, fused at the last layer (lesion models);
* :class:`VelocityUNet`: one branch over [image, time, contrast] channels -> a velocity field
  (the rectified-flow anomaly model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------------
def _norm(c):
    # Batch norm (running statistics at inference): the prediction does not depend on the
    # window size, so a whole brain box can be predicted in one window, and ONNX Runtime folds
    # the normalisation into the convolution.
    return nn.BatchNorm3d(c, momentum=0.05)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.c1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(cout)
        self.c2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(cout)
        self.skip = None if (cin == cout and stride == 1) else nn.Sequential(
            nn.Conv3d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x):
        y = F.leaky_relu(self.n1(self.c1(x)), 0.01)
        y = self.n2(self.c2(y))
        return F.leaky_relu(y + (x if self.skip is None else self.skip(x)), 0.01)


class Branch(nn.Module):
    """Residual-encoder U-Net trunk over ``cin`` input channels; returns full-resolution features."""

    def __init__(self, feats=(8, 16, 32, 64), cin: int = 1):
        super().__init__()
        self.stem = ResBlock(cin, feats[0])
        self.down = nn.ModuleList(ResBlock(a, b, 2) for a, b in zip(feats[:-1], feats[1:]))
        self.up = nn.ModuleList(nn.ConvTranspose3d(b, a, 2, 2) for a, b in zip(feats[:-1], feats[1:]))
        self.dec = nn.ModuleList(ResBlock(2 * a, a) for a in feats[:-1])

    def forward(self, x):
        skips = [self.stem(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        y = skips.pop()
        for up, dec in zip(reversed(self.up), reversed(self.dec)):
            y = dec(torch.cat([up(y), skips.pop()], 1))
        return y


class LateFusionUNet(nn.Module):
    """One branch per input channel; features concatenated at the last layer -> 2 logits."""

    def __init__(self, n_inputs: int, feats=(8, 16, 32, 64)):
        super().__init__()
        self.branches = nn.ModuleList(Branch(feats) for _ in range(n_inputs))
        self.head = nn.Conv3d(feats[0] * n_inputs, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([b(x[:, i:i + 1]) for i, b in enumerate(self.branches)], 1))


class VelocityUNet(nn.Module):
    """Velocity field v(x_t, t, contrast) of a rectified flow, one 3D U-Net.

    Input ``(B, 3, z, y, x)``: the image at time t, t broadcast as a constant channel, and the
    contrast flag (0 T1-w, 1 FLAIR) as a constant channel. Output ``(B, 1, z, y, x)``.
    """

    def __init__(self, feats=(8, 16, 32, 64)):
        super().__init__()
        self.trunk = Branch(feats, cin=3)
        self.head = nn.Conv3d(feats[0], 1, 1)

    def forward(self, x):
        return self.head(self.trunk(x))
