"""The loops the benchmark compares against: pytorch/examples `dcgan/main.py`, and the usual WGAN-GP loop.

DCGAN: Radford et al., 2015, as written in github.com/pytorch/examples (dcgan/main.py): D ends in a Sigmoid and is
trained with nn.BCELoss, errD_real and errD_fake are backpropagated separately, the G step reuses the D step's fakes
with real labels, and every iteration reads five Python floats with `.item()` for its log line. WGAN-GP: Gulrajani
et al., 2017, Algorithm 1, as in the common PyTorch ports: n_critic critic updates, each with the penalty, then a G
step with D frozen. Both run in float32 with the default (foreach) Adam, no Accelerate, no autocast.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.nets import NetConfig, build


class _Sigmoid(nn.Module):
    """The examples' netD: the same layers as the project's D, then nn.Sigmoid()."""

    def __init__(self, d: nn.Module):
        super().__init__()
        self.d, self.act = d, nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.d(x))


class ReferenceLoop:
    """One iteration per call, on float32 batches already in [-1, 1] (no decoding, no transforms).

    `host_batches=False`: the data sit on `device` and batches are gathered there, the most favourable case for the
    reference (the ratios against it are conservative). True: batches wait in host memory, made ahead as DataLoader
    workers would, and the loop copies each to the device with `.to(device)`, as the example does.
    """

    def __init__(self, cfg: NetConfig, data: torch.Tensor, batch: int, device: torch.device, loss: str = "bce",
                 n_critic: int = 5, gp_weight: float = 10.0, seed: int = 0, host_batches: bool = False):
        torch.manual_seed(seed)
        G, D = build(cfg)
        self.G, self.device, self.batch, self.nz, self.loss = G.to(device), device, batch, cfg.z_dim, loss
        self.D = (_Sigmoid(D) if loss == "bce" else D).to(device)
        self.n_critic, self.gp_weight = n_critic, gp_weight
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.criterion = nn.BCELoss()
        self.host_batches = host_batches
        self.data = data if host_batches else data.to(device)
        self._order = torch.randperm(len(self.data), device=self.data.device)
        self._pos = 0
        # Host mode: a few pageable batches, prepared ahead (the example's DataLoader has pin_memory off).
        self._ready = [self._gather().contiguous() for _ in range(4)] if host_batches else []
        self.log: tuple[float, ...] = ()

    def _next_batch(self) -> torch.Tensor:
        if self.host_batches:
            self._ready.append(self._ready.pop(0))
            return self._ready[0]
        return self._gather()

    def _gather(self) -> torch.Tensor:
        if self._pos + self.batch > len(self.data):
            self._order, self._pos = torch.randperm(len(self.data), device=self.data.device), 0
        idx = self._order[self._pos : self._pos + self.batch]
        self._pos += self.batch
        return self.data[idx]

    def __call__(self) -> None:
        if self.loss == "bce":
            self._dcgan_step(self._next_batch())
        else:
            self._wgan_gp_step()

    def end_round(self) -> None:
        pass

    def _dcgan_step(self, real_cpu: torch.Tensor) -> None:
        """pytorch/examples dcgan/main.py, the body of `for i, data in enumerate(dataloader)`."""
        netD, netG, criterion, device, nz = self.D, self.G, self.criterion, self.device, self.nz
        real_label, fake_label = 1.0, 0.0
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        real = real_cpu.to(device)
        batch_size = real.size(0)
        label = torch.full((batch_size,), real_label, dtype=real.dtype, device=device)
        output = netD(real)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()
        noise = torch.randn(batch_size, nz, 1, 1, device=device)
        fake = netG(noise)
        label.fill_(fake_label)
        output = netD(fake.detach())
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.mean().item()
        errD = errD_real + errD_fake
        self.opt_d.step()
        # (2) Update G network: maximize log(D(G(z)))
        netG.zero_grad()
        label.fill_(real_label)  # fake labels are real for generator cost
        output = netD(fake)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = output.mean().item()
        self.opt_g.step()
        self.log = (errD.item(), errG.item(), D_x, D_G_z1, D_G_z2)  # the example prints these every iteration

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        alpha = torch.rand(real.size(0), 1, 1, 1, device=self.device)
        interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        out = self.D(interpolates)
        (grad,) = torch.autograd.grad(out, interpolates, grad_outputs=torch.ones_like(out), create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean() * self.gp_weight

    def _wgan_gp_step(self) -> None:
        """Gulrajani et al., 2017, Algorithm 1: n_critic critic updates with the penalty, then one G update."""
        netD, netG, device, nz = self.D, self.G, self.device, self.nz
        for p in netD.parameters():
            p.requires_grad_(True)
        for _ in range(self.n_critic):
            real = self._next_batch().to(device)
            netD.zero_grad()
            d_real = netD(real).mean()
            noise = torch.randn(real.size(0), nz, device=device)
            with torch.no_grad():
                fake = netG(noise)
            d_fake = netD(fake).mean()
            d_cost = d_fake - d_real + self._gradient_penalty(real, fake)
            d_cost.backward()
            self.opt_d.step()
            self.log = (d_cost.item(), (d_real - d_fake).item())
        for p in netD.parameters():
            p.requires_grad_(False)  # to avoid computation
        netG.zero_grad()
        g_cost = -netD(netG(torch.randn(self.batch, nz, device=device))).mean()
        g_cost.backward()
        self.opt_g.step()
        self.log += (g_cost.item(),)
