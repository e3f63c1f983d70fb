"""Every registered method's search stays identical on every rank under DDP (2 CPU processes, gloo), one worker
parametrised over the registry.

nnU-Net's own ``-num_gpus`` path asserts CUDA, so this exercises the same module arrangement the search trainer
uses under DDP: the SearchNetwork (supernet + alpha) wrapped with ``find_unused_parameters=True``, different data
on each rank, architecture steps with Adam, weight steps with alpha frozen, the JSD rule's pruning decisions.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_nas.nnunet.search_network import SearchNetwork
from nnunet_nas.registry import method_names
from nnunet_nas.strategies.base import SearchProgress

pytestmark = pytest.mark.ddp


def _start(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)


def _spawn(worker, *args):
    """Run ``worker(rank, 2, port, *args)`` in 2 processes on a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port, *args), nprocs=2, join=True)


def _gathered(flat, world):
    """``flat`` of every rank."""
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    return gathered


def _train_under_nnunets_ddp(net, input_shape):
    """Two SGD iterations of ``net`` wrapped as nnU-Net wraps it (no find_unused_parameters): the second fails if
    any parameter went unused in the first."""
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        sum(o.square().mean() for o in ddp(torch.randn(*input_shape))).backward()
        opt.step()


def _prune_by_jsd(jsd, model, step, steps):
    """The JSD rule's decision at the end of epoch ``step``, applied to the alpha mask as the trainer applies it;
    ``[flat mask]`` when it pruned, ``[]`` otherwise."""
    alive = jsd.on_epoch_end(model, SearchProgress(step, steps, 0, step + 1, steps))
    if alive is None:
        return []
    model.arch.set_alive_ops(alive)
    return [alive.flatten().float()]


def _finish():
    """All ranks meet before the group is torn down: a rank that destroys gloo's group while another still talks
    to it can abort the process ("terminate called without an active exception")."""
    dist.barrier()
    dist.destroy_process_group()


def _search_worker(rank, world, port, name, out):
    """Method ``name``'s tiny 2-D supernet under DDP as the search trainer wraps it (trained-host parts frozen before
    wrapping, ``find_unused_parameters=True``, the weighting seeded the same on every rank), different data on each
    rank, three bi-level iterations (architecture step; weight step with alpha frozen) with the JSD rule deciding at
    each epoch end; then the discretised genotype's fixed network under nnU-Net's DDP wrapping."""
    from helpers import TINY_CONFIGS, tiny_planned
    from nnunet_nas.registry import get_method
    from nnunet_nas.strategies.jsd_pruning import JSDRule, JSDStabilityPruning
    _start(rank, world, port)
    method, cfg = get_method(name), TINY_CONFIGS[name]
    op_set, planned = method.op_set_for(cfg, 2), tiny_planned(2, (16, 16))
    torch.manual_seed(100 + rank)  # different initialisation per rank: DDP must broadcast rank 0's
    supernet = method.build_supernet(cfg, op_set, 1, 2, 2, False, planned=planned)
    if method.trained_host:  # the host is a trained model: the same on every rank, frozen before wrapping
        torch.manual_seed(0)
        supernet = method.build_supernet(cfg, op_set, 1, 2, 2, False, planned=planned)
        host_before = [p.detach().clone() for p in supernet.host_parameters()]
        for p in supernet.host_parameters():
            p.requires_grad_(False)
    weighting = method.make_weighting(cfg)
    weighting.seed(12345)  # as the search trainer seeds it
    model = SearchNetwork(supernet, method.build_arch_params(cfg, supernet, op_set), weighting)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    arch_opt = torch.optim.Adam(model.arch_parameters(), lr=0.05, betas=(0.5, 0.999))
    w_opt = torch.optim.SGD([p for p in model.weight_parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    jsd = JSDStabilityPruning(JSDRule(window=1, threshold=1.0, gamma=1.0))  # stable from the second epoch on
    torch.manual_seed(1000 + rank)
    pruned = []
    for step in range(3):
        x = torch.randn(2, 1, 16, 16) * (rank + 1)  # different data on each rank
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
        pruned += _prune_by_jsd(jsd, model, step, 3)
    if method.trained_host:
        assert all(torch.equal(a, b) for a, b in zip(host_before, supernet.host_parameters()))
    trained = [p.detach().flatten() for p in model.parameters() if p.requires_grad]
    gathered = _gathered(torch.cat(pruned + trained), world)
    genotype = method.discretize(model.arch.state_dict(), op_set, cfg=cfg)
    net = method.network_class(1, 2, deep_supervision=True, **method.fixed_network_kwargs(
        genotype, cfg.export_channel_mul or 1.0, planned=planned))
    _train_under_nnunets_ddp(net, (2, 1, 16, 16))
    if rank == 0:
        torch.save({"gathered": gathered, "pruned": len(pruned)}, out)
    _finish()


@pytest.mark.parametrize("name", method_names())
def test_search_keeps_every_rank_identical_and_its_export_trains_under_ddp(name, tmp_path):
    out = str(tmp_path / f"{name}.pt")
    _spawn(_search_worker, name, out)
    res = torch.load(out)
    assert res["pruned"] > 0  # the JSD rule pruned: its masks are among the compared tensors
    assert torch.equal(res["gathered"][0], res["gathered"][1])


def _fixed_network_worker(rank, world, port):
    """Exported networks train under DDP wrapped as nnU-Net wraps it (no find_unused_parameters: every parameter is
    used): the published DiNTS architecture (input level 3 unread), and a DAST network with a transformer on every
    active edge."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from helpers import CVPR_JSON, TINY_CONFIGS
    from nnunet_nas.genotypes.monai_compat import load_monai_file
    from nnunet_nas.nnunet.export import architecture_block
    from nnunet_nas.planned_network import PlannedNetwork
    from nnunet_nas.registry import get_method
    _start(rank, world, port)
    arch = architecture_block(get_method("dints"), load_monai_file(CVPR_JSON), 0.0625)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 2,
                                 allow_init=True, deep_supervision=True)
    _train_under_nnunets_ddp(net, (1, 1, 32, 32, 32))
    dast, cfg, planned = get_method("dast"), TINY_CONFIGS["dast"], PlannedNetwork("none", patch_size=(16, 16))
    torch.manual_seed(0)  # the same genotype on every rank
    supernet = dast.build_supernet(cfg, "dast_2d", 1, 2, 2, False, planned=planned)
    genotype = dast.discretize(dast.build_arch_params(cfg, supernet, "dast_2d").state_dict(), "dast_2d")
    genotype.ops = [["transformer" if on else None for on in row] for row in genotype.arch_code_a]
    _train_under_nnunets_ddp(dast.network_class(1, 2, deep_supervision=True, **dast.fixed_network_kwargs(
        genotype, 0.125, planned=planned)), (2, 1, 16, 16))
    _finish()


def test_exported_networks_train_under_nnunets_ddp_wrapping():
    _spawn(_fixed_network_worker)
