"""Architecture parameters stay identical on every rank under DDP (2 CPU processes, gloo).

nnU-Net's own ``-num_gpus`` path asserts CUDA, so this exercises the same module arrangement the search trainer
uses under DDP: the SearchNetwork (supernet + alpha) wrapped with ``find_unused_parameters=True``, different data
on each rank, architecture steps with Adam, weight steps with alpha frozen.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_nas.arch.params import GridArchParams
from nnunet_nas.arch.weighting import GridEdgeOpWeighting
from nnunet_nas.networks.dints_net import DiNTSNet
from nnunet_nas.nnunet.search_network import SearchNetwork


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # different initialisation per rank: DDP must broadcast rank 0's
    model = SearchNetwork(DiNTSNet(1, 2, None, num_blocks=2, num_depths=2, channel_mul=0.125),
                          GridArchParams(2, 2, 5), GridEdgeOpWeighting())
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    arch_opt = torch.optim.Adam(model.arch_parameters(), lr=0.05, betas=(0.5, 0.999))
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.01, momentum=0.9)
    for step in range(3):
        x = torch.randn(1, 1, 16, 16, 16) * (rank + 1)  # different data on each rank
        arch_opt.zero_grad()
        ddp(x).square().mean().backward()
        arch_opt.step()
        for p in model.arch_parameters():
            p.grad = None
        model.arch_frozen = True
        w_opt.zero_grad()
        ddp(x).abs().mean().backward()  # alpha gets no gradient here: needs find_unused_parameters
        w_opt.step()
        model.arch_frozen = False
    flat = torch.cat([p.detach().flatten() for p in model.arch_parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save({"gathered": gathered}, out)
    dist.destroy_process_group()


def test_arch_parameters_identical_on_all_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "alpha.pt")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    gathered = torch.load(out)["gathered"]
    assert torch.equal(gathered[0], gathered[1])
    initial = GridArchParams(2, 2, 5)
    assert gathered[0].numel() == sum(p.numel() for p in initial.parameters())
