"""A few DistributedDataParallel training steps of ERDN's cascade, for tests/test_gpu.py (run under torchrun).

    torchrun --standalone --nproc_per_node 2 tests/ddp_steps.py BACKEND PRESET DEVICE SIZE

Every rank uses DEVICE (two ranks may share one GPU) and its own random batches; rank 0 prints one JSON line:
the backend, the world size, its losses, and whether every rank ended with the same weights.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from training.losses import CascadeLoss, LossWeights
from training.train import CascadeForward, train_step
from worker.model import build_model


def main(argv: list[str]) -> int:
    backend, preset, device_name, size = argv[0], argv[1], argv[2], int(argv[3])
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)  # set_device and DDP's device_ids need an index
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(preset, 5).to(device).train()
    net = nn.parallel.DistributedDataParallel(CascadeForward(model),
                                              device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = CascadeLoss(LossWeights(1.0, 1.0, 1.0)).to(device)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own batches: only the gradients are shared
    losses = []
    for _ in range(3):
        blur = torch.rand(2, 5, 3, size, size, generator=data).to(device)
        sharp = torch.rand(2, 5, 3, size, size, generator=data).to(device)  # the window's sharp frames
        terms = train_step(net, criterion, optimizer, blur, sharp, amp=device.type == "cuda")
        losses.append(float(terms["total"]))
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    if backend == "gloo":
        flat = flat.cpu()  # gloo gathers CPU tensors only (its CUDA support is broadcast and all_reduce, what DDP uses)
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        print(json.dumps({"backend": backend, "world": world, "device": str(device), "losses": losses,
                          "params_equal": all(torch.equal(gathered[0], t) for t in gathered[1:])}), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
