"""Networks shared by the training scripts under ``models/`` (PyTorch; never imported by the
server, which runs their ONNX exports).

* :class:`Branch`: a residual-encoder U-Net trunk, 3D (or 2D with ``dims=2``: residual blocks,
  stride-2 downsampling, transposed-convolution upsampling, skip connections), returning
  full-resolution features;
* :class:`LateFusionUNet`: one branch per input contrast, fused at the last layer (lesion models);
* :class:`VelocityUNet`: one branch over [image, time, contrast] channels -> a velocity field
  (the rectified-flow anomaly model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------------
def _norm(c, dims=3):
    # Batch norm (running statistics at inference): the prediction does not depend on the
    # window size, so a whole brain box can be predicted in one window, and ONNX Runtime folds
    # the normalisation into the convolution.
    return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(c, momentum=0.05)


def _conv(dims):
    return nn.Conv3d if dims == 3 else nn.Conv2d


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride=1, dims=3):
        super().__init__()
        conv = _conv(dims)
        self.c1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(cout, dims)
        self.c2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(cout, dims)
        self.skip = None if (cin == cout and stride == 1) else nn.Sequential(
            conv(cin, cout, 1, stride, bias=False), _norm(cout, dims))

    def forward(self, x):
        y = F.leaky_relu(self.n1(self.c1(x)), 0.01)
        y = self.n2(self.c2(y))
        return F.leaky_relu(y + (x if self.skip is None else self.skip(x)), 0.01)


class Branch(nn.Module):
    """Residual-encoder U-Net trunk over ``cin`` input channels, ``dims`` 3 (volumes) or 2
    (slices); returns full-resolution features."""

    def __init__(self, feats=(8, 16, 32, 64), cin: int = 1, dims: int = 3):
        super().__init__()
        up = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        self.stem = ResBlock(cin, feats[0], dims=dims)
        self.down = nn.ModuleList(ResBlock(a, b, 2, dims) for a, b in zip(feats[:-1], feats[1:]))
        self.up = nn.ModuleList(up(b, a, 2, 2) for a, b in zip(feats[:-1], feats[1:]))
        self.dec = nn.ModuleList(ResBlock(2 * a, a, dims=dims) for a in feats[:-1])

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


# ------------------------------------------------------------------------------------------
def load_checkpoint(net: nn.Module, opt: torch.optim.Optimizer, ckpt) -> dict:
    """Restore ``net`` and ``opt`` from ``ckpt`` when it exists; returns the saved dict (with at
    least ``step``), or ``{"step": 0}`` for a fresh start."""
    from pathlib import Path

    if not Path(ckpt).exists():
        return {"step": 0}
    state = torch.load(ckpt, weights_only=False)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    print(f"resumed from step {state['step']} ({ckpt})")
    return state


def train_loop(net: nn.Module, opt: torch.optim.Optimizer, batch_loss, *, steps: int, lr: float, ckpt,
               start_step: int = 0, save_every: int = 100, extra_state: dict | None = None,
               clip: float = 12.0, desc: str = "training") -> int:
    """The optimisation loop shared by every training script: ``batch_loss()`` draws a batch and
    returns its loss; AdamW-style step with gradient-norm clipping at ``clip``; polynomial
    (power 0.9) learning-rate decay from ``lr`` to 0 at ``steps``; a progress bar; a checkpoint
    (model, optimiser, step and ``extra_state``) every ``save_every`` steps and at the end, so
    that rerunning the script resumes. Returns the last step."""
    from tqdm import tqdm

    for g in opt.param_groups:
        g.setdefault("initial_lr", lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - min(s, steps) / steps) ** 0.9,
                                              last_epoch=start_step - 1)
    net.train()
    step = start_step
    bar = tqdm(total=steps, initial=step, desc=desc)
    while step < steps:
        loss = batch_loss()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % save_every == 0 or step == steps:
            torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step, **(extra_state or {})}, ckpt)
    bar.close()
    return step
