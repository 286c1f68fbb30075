"""The public Spiking-Diffusion networks built from SpikingJelly's own layers, for snc's compatibility test.

The public code (paper 003) builds its VQ-SVAE and SDID from SpikingJelly's ``layer.Conv2d``,
``layer.BatchNorm2d``, ``layer.ConvTranspose2d`` and ``neuron.LIFNode(surrogate_function=surrogate.ATan())``
in multi-step mode, and saves their bare ``state_dict()``. This script (run in ``.venv-spikingjelly``, see
``tools/spikingjelly_export.py``; it imports nothing of snc) builds networks with the same module tree and
key names from SpikingJelly 2.0, gives them random weights and BatchNorm statistics, runs them there on a
random batch and writes

    OUT/model.pth, OUT/diff_model.pth   the state dicts, as the public main.py saves them
    OUT/outputs.npz                     inputs and SpikingJelly's results: image, z (encoder spikes),
                                        indices, e (ASG spikes), recon; x_t, t, logits (the SDID)

The codebook lookup, the features and the membrane output are plain torch, as in the public code.

    .venv-spikingjelly/bin/python tools/spikingjelly_public_vq.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

T, K, BATCH = 16, 32, 3


def lif() -> nn.Module:
    return neuron.LIFNode(surrogate_function=surrogate.ATan())


def stage(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, layer.BatchNorm2d(channels), lif()]


class Holder(nn.Module):
    """A module that only holds children (the public classes' attribute names give the state dict keys)."""

    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


class Coef(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("coef", torch.pow(torch.tensor(0.8), torch.arange(T - 1, -1, -1)).reshape(T, 1, 1, 1, 1))


def vqsvae() -> nn.Module:
    encoder = nn.Sequential(*stage(layer.Conv2d(1, 32, 3, 2, 1), 32), *stage(layer.Conv2d(32, 64, 3, 2, 1), 64),
                            *stage(layer.Conv2d(64, 16, 1, 1, 0), 16))
    decoder = nn.Sequential(*stage(layer.ConvTranspose2d(16, 64, 3, 2, 1, output_padding=1), 64),
                            *stage(layer.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), 32),
                            layer.ConvTranspose2d(32, 1, 3, 1, 1, output_padding=0))
    vq = Holder(memout=Coef(), embeddings=nn.Embedding(K, 16),
                poisson=nn.Sequential(*stage(layer.Conv2d(16, 16, 1), 16)))
    vq.alpha = nn.Parameter(torch.tensor(0.3))
    return Holder(encoder=Holder(snn_convs=encoder), vq_layer=vq, decoder=Holder(snn_convs=decoder), memout=Coef())


def sdid() -> nn.Module:
    convs, previous = {}, 2
    for i, c in enumerate((64, 128, 256, 512, 256), start=1):
        convs[f"conv{i}"] = nn.Sequential(*stage(layer.Conv2d(previous, c, 3, 1, 1), c))
        previous = c
    return Holder(**convs, conv6=nn.Sequential(layer.Conv2d(320, K, 3, 1, 1)))


def randomise_batchnorm(net: nn.Module) -> None:
    """Statistics and affine values that leave the LIFs firing at moderate rates (a fresh BN would not)."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.8, 1.6)
            m.bias.data.uniform_(0.2, 1.2)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(1000)


@torch.no_grad()
def run_vqsvae(net: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    z = net.encoder.snn_convs(image.unsqueeze(0).repeat(T, 1, 1, 1, 1))
    vq = net.vq_layer
    f = (1 - vq.alpha) * torch.sum(z * vq.memout.coef, dim=0) + vq.alpha * torch.sum(z, dim=0) / T
    flat = f.permute(0, 2, 3, 1).reshape(-1, 16)
    e_w = vq.embeddings.weight
    indices = torch.argmin(torch.sum(flat ** 2, 1, keepdim=True) + torch.sum(e_w ** 2, 1) - 2. * flat @ e_w.t(), 1)
    q = vq.embeddings(indices).view(f.shape[0], 7, 7, 16).permute(0, 3, 1, 2)
    e = vq.poisson(q.unsqueeze(0).repeat(T, 1, 1, 1, 1))
    recon = torch.tanh(torch.sum(net.decoder.snn_convs(e) * net.memout.coef, dim=0))
    functional.reset_net(net)
    return {"image": image, "z": z, "indices": indices, "e": e, "recon": recon}


@torch.no_grad()
def run_sdid(net: nn.Module, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    x = torch.cat((x_t, torch.ones_like(x_t) * t.reshape(-1, 1, 1, 1)), dim=1).unsqueeze(0).repeat(T, 1, 1, 1, 1)
    x1 = net.conv1(x)
    h = net.conv5(net.conv4(net.conv3(net.conv2(x1))))
    logits = torch.sum(net.conv6(torch.cat((h, x1), dim=2)), dim=0) / T
    functional.reset_net(net)
    return logits


def main(out: Path) -> None:
    torch.manual_seed(5)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, net in (("model.pth", vqsvae()), ("diff_model.pth", sdid())):
        randomise_batchnorm(net)
        functional.set_step_mode(net, "m")
        net.eval()
        if name == "model.pth":
            net.vq_layer.embeddings.weight.data.uniform_(0, 0.8)
            results |= run_vqsvae(net, torch.rand(BATCH, 1, 28, 28) - 0.5)
        else:
            x_t, t = torch.randint(0, K + 1, (BATCH, 1, 7, 7)).float(), torch.tensor([1, 25, 49])
            results |= {"x_t": x_t, "t": t, "logits": run_sdid(net, x_t, t)}
        torch.save(net.state_dict(), out / name)
    np.savez(out / "outputs.npz", **{k: v.numpy() for k, v in results.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
