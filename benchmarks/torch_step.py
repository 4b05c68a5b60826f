"""The NHL train step in PyTorch, written as the released NHL code computes it.

Used by ``benchmarks/step_overhead.py --against-torch`` (torch is optional:
``pip install torch``; nothing else imports this file). The model is the
library's small CNN (conv32-pool-conv64-pool-fc256, 3x3 convolutions with
padding 1, 2x2 max-pooling, ReLU) and one nested hash layer Linear(256,
max bits); the loss is DPN per length (targets in {-1, +1}, margin 1);
the distillation is SP-KD from length k+1 to k with the teacher detached;
the dominance weighting takes, as the released code does, one backward per
length for the head gradients (``torch.autograd.grad`` on the hash layer's
weight, graph retained), computes the weights from their per-prefix inner
products (NHL arXiv 2412.08922 Eq. 6-7, rule 'paper'), and then runs the
weighted backward. Adam, learning rate 1e-3.
"""

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """conv32-pool-conv64-pool-fc256, as ``nhl_jax.models.SmallCNN``."""

    def __init__(self, channels: int = 1, size: int = 28, width: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (size // 4) ** 2, width)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))


class NHLNet(nn.Module):
    """Backbone + one nested hash layer of the longest width."""

    def __init__(self, bits):
        super().__init__()
        self.backbone = SmallCNN()
        self.hash = nn.Linear(self.backbone.fc.out_features, max(bits))

    def forward(self, x):
        return self.hash(self.backbone(x))


def dpn_loss(u, targets, margin: float = 1.0):
    """mean relu(m - u t), the DPN hinge (as ``nhl_jax.losses.dpn``)."""
    return F.relu(margin - u * targets).mean()


def sp_kd(student, teacher):
    """SP-KD of a student code on its detached teacher (Tung & Mori 2019)."""
    teacher = teacher.detach()
    g_s = F.normalize(student @ student.t(), dim=1)
    g_t = F.normalize(teacher @ teacher.t(), dim=1)
    return ((g_t - g_s) ** 2).sum() / student.shape[0] ** 2


def paper_weights(grads, bits):
    """The dominance weights from per-length hash-weight gradients.

    ``grads[i]`` is dL_i / dW [K_max, D]; the parameters of length k are
    the first b_k rows. alpha_1 = 1; alpha_i = min(1, min over the shorter
    k that i anti-dominates of alpha_k |g_k^k|^2 / ((m - k) (-<g_i^k,
    g_k^k>))); rescaled to sum to M.
    """
    m = len(bits)
    alphas = [torch.ones(())]
    for i in range(1, m):
        alpha = torch.ones(())
        for k in range(i):
            g_kk = grads[k][:bits[k]]
            dot = (grads[i][:bits[k]] * g_kk).sum()
            if dot < 0:
                cap = alphas[k] * (g_kk * g_kk).sum() / ((m - k - 1) * -dot)
                alpha = torch.minimum(alpha, cap)
        alphas.append(alpha)
    alphas = torch.stack(alphas)
    return alphas * m / alphas.sum()


class TorchStep:
    """One NHL train step in PyTorch for a fixed batch.

    Args:
      bits: sorted code lengths.
      weighting: 'none' or 'paper'.
      distill_weight: lambda of the distillation (0: none).
      batch_size: B.
      seed: of the weights, the batch and the targets.
    """

    def __init__(self, bits, *, weighting='none', distill_weight=0.0,
                 batch_size=64, seed=0):
        torch.manual_seed(seed)
        self.bits = tuple(bits)
        self.weighting, self.distill_weight = weighting, distill_weight
        self.net = NHLNet(self.bits)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.images = torch.rand(batch_size, 1, 28, 28)
        labels = torch.randint(0, 10, (batch_size,))
        self.targets = [
            torch.where(torch.rand(10, b) < 0.5, -1.0, 1.0)[labels]
            for b in self.bits]

    def losses(self, h):
        """[M] per-length objectives L_k + lambda L_dis(k)."""
        codes = [h[:, :b] for b in self.bits]
        values = [dpn_loss(c, t) for c, t in zip(codes, self.targets)]
        if self.distill_weight:
            for k in range(len(codes) - 1):
                values[k] = values[k] + self.distill_weight * sp_kd(
                    codes[k], codes[k + 1])
        return values

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        values = self.losses(self.net(self.images))
        if self.weighting == 'paper':
            grads = [torch.autograd.grad(v, self.net.hash.weight,
                                         retain_graph=True)[0]
                     for v in values]
            weights = paper_weights(grads, self.bits)
        else:
            weights = torch.ones(len(values))
        total = sum(w * v for w, v in zip(weights, values))
        total.backward()
        self.opt.step()
        return total.detach()


class TorchBackbone:
    """The backbone alone: forward, or forward + backward of sum(f^2)."""

    def __init__(self, *, backward: bool, batch_size=64, seed=0):
        torch.manual_seed(seed)
        self.net = SmallCNN()
        self.backward = backward
        self.images = torch.rand(batch_size, 1, 28, 28)

    def __call__(self):
        if not self.backward:
            with torch.no_grad():
                return self.net(self.images)
        self.net.zero_grad(set_to_none=True)
        value = (self.net(self.images) ** 2).sum()
        value.backward()
        return value.detach()
