"""Architecture parameters stay identical on every rank under DDP (2 CPU processes, gloo).

nnU-Net's own ``-num_gpus`` path asserts CUDA, so this exercises the same module arrangement the search trainer
uses under DDP: the SearchNetwork (supernet + alpha) wrapped with ``find_unused_parameters=True``, different data
on each rank, architecture steps with Adam, weight steps with alpha frozen.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_nas.arch.params import GridArchParams
from nnunet_nas.arch.weighting import GridEdgeOpWeighting
from nnunet_nas.networks.dints_net import DiNTSNet
from nnunet_nas.nnunet.search_network import SearchNetwork
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


def _worker(rank, world, port, out):
    _start(rank, world, port)
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
    gathered = _gathered(torch.cat([p.detach().flatten() for p in model.arch_parameters()]), world)
    if rank == 0:
        torch.save({"gathered": gathered}, out)
    _finish()


def test_arch_parameters_identical_on_all_ranks(tmp_path):
    out = str(tmp_path / "alpha.pt")
    _spawn(_worker, out)
    gathered = torch.load(out)["gathered"]
    assert torch.equal(gathered[0], gathered[1])
    initial = GridArchParams(2, 2, 5)
    assert gathered[0].numel() == sum(p.numel() for p in initial.parameters())


def _fixed_network_worker(rank, world, port):
    """An exported network trains under DDP wrapped as nnU-Net wraps it."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunet_nas.genotypes.monai_compat import load_monai_file
    from nnunet_nas.nnunet.export import architecture_block
    from nnunet_nas.registry import get_method
    from helpers import CVPR_JSON
    _start(rank, world, port)
    genotype = load_monai_file(CVPR_JSON)  # input level 3 unread
    arch = architecture_block(get_method("dints"), genotype, 0.0625)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 2,
                                 allow_init=True, deep_supervision=True)
    _train_under_nnunets_ddp(net, (1, 1, 32, 32, 32))
    _finish()


def test_exported_network_trains_under_nnunets_ddp_wrapping():
    _spawn(_fixed_network_worker)


def _scnas_worker(rank, world, port, out):
    """SCNAS search steps under DDP: the pair sampling must draw the same ops on every rank (same seed), so that
    every rank runs the same sub-network and alpha stays identical; the JSD rule prunes the same ops on every rank;
    then the exported network under nnU-Net's DDP wrapping (no find_unused_parameters)."""
    import numpy as np
    from nnunet_nas.arch.weighting import GumbelPairWeighting
    from nnunet_nas.config import SCNASSearchConfig
    from nnunet_nas.methods.scnas import build_arch_params, build_supernet, discretize, fixed_network_kwargs
    from nnunet_nas.networks.scnas_net import SCNASNet
    from nnunet_nas.strategies.jsd_pruning import JSDRule, JSDStabilityPruning
    _start(rank, world, port)
    torch.manual_seed(100 + rank)
    cfg = SCNASSearchConfig(channel_mul=0.0625, num_nodes=2)
    supernet = build_supernet(cfg, "scnas_2d", 1, 2, 2, False)
    weighting = GumbelPairWeighting(5.0)
    weighting.seed(12345)  # as the search trainer seeds it: the same on every rank
    model = SearchNetwork(supernet, build_arch_params(cfg, supernet, "scnas_2d"), weighting)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    arch_opt = torch.optim.Adam(model.arch_parameters(), lr=0.05, betas=(0.5, 0.999))
    masks, pruned = [], []
    jsd = JSDStabilityPruning(JSDRule(window=1, threshold=1.0, gamma=1.0))  # stable from the second epoch on
    for step in range(3):
        state = weighting.generator.get_state()
        masks.append(weighting(model.arch).active.flatten().float())
        weighting.generator.set_state(state)  # the forward below draws the same sample
        arch_opt.zero_grad()
        ddp(torch.randn(2, 1, 16, 16) * (rank + 1)).square().mean().backward()
        arch_opt.step()
        pruned += _prune_by_jsd(jsd, model, step, 3)
    assert pruned  # the rule pruned something: the comparison below covers its masks
    gathered = _gathered(torch.cat(masks + pruned + [p.detach().flatten() for p in model.arch_parameters()]), world)
    genotype = discretize({"op_logits": model.arch.op_logits}, "scnas_2d")
    _train_under_nnunets_ddp(SCNASNet(1, 2, deep_supervision=True, **fixed_network_kwargs(genotype, 0.0625)),
                             (1, 1, 16, 16))
    if rank == 0:
        torch.save({"gathered": gathered, "sampled_ops": int(np.sum(masks[0].numpy()))}, out)
    _finish()


def test_scnas_samples_the_same_ops_on_every_rank_and_its_export_trains_under_ddp(tmp_path):
    out = str(tmp_path / "scnas.pt")
    _spawn(_scnas_worker, out)
    res = torch.load(out)
    assert torch.equal(res["gathered"][0], res["gathered"][1])
    assert res["sampled_ops"] == 2 * 4 * 5  # two ops on each of the 5 edges of the 4 cell types


def _iac_worker(rank, world, port, out):
    """IAC search steps under DDP with the host frozen (requires_grad off before wrapping, as the trainer does):
    alpha, beta and the cells stay identical on every rank, the host is untouched, the JSD rule prunes the same ops
    on every rank; then the exported network (host + fixed cells) under nnU-Net's DDP wrapping."""
    from helpers import TINY_CONFIGS, tiny_planned
    from nnunet_nas.arch.weighting import EdgeNormalisedWeighting
    from nnunet_nas.methods.iac import build_arch_params, build_supernet, discretize, fixed_network_kwargs
    from nnunet_nas.networks.iac_net import IACUNet
    from nnunet_nas.strategies.jsd_pruning import JSDRule, JSDStabilityPruning
    _start(rank, world, port)
    torch.manual_seed(0)  # same initial weights on every rank, as nnU-Net's DDP broadcast makes them
    cfg = TINY_CONFIGS["iac"]
    supernet = build_supernet(cfg, "darts_2d", 1, 2, 2, False, planned=tiny_planned(2))
    host_before = [p.detach().clone() for p in supernet.host_parameters()]
    for p in supernet.host_parameters():
        p.requires_grad_(False)
    model = SearchNetwork(supernet, build_arch_params(cfg, supernet, "darts_2d"), EdgeNormalisedWeighting())
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    torch.manual_seed(100 + rank)  # different data on each rank
    jsd = JSDStabilityPruning(JSDRule(window=1, threshold=1.0, gamma=1.0))
    pruned = []
    for step in range(3):
        opt.zero_grad()
        ddp(torch.randn(2, 1, 16, 16) * (rank + 1)).square().mean().backward()
        opt.step()
        pruned += _prune_by_jsd(jsd, model, step, 3)
    assert pruned and all(torch.equal(a, b) for a, b in zip(host_before, supernet.host_parameters()))
    trained = [p.detach().flatten() for p in model.parameters() if p.requires_grad]
    gathered = _gathered(torch.cat(pruned + trained), world)
    genotype = discretize(model.arch.state_dict(), "darts_2d", cfg=cfg)
    _train_under_nnunets_ddp(IACUNet(1, 2, deep_supervision=True,
                                     **fixed_network_kwargs(genotype, 1.0, planned=tiny_planned(2))), (1, 1, 16, 16))
    if rank == 0:
        torch.save({"gathered": gathered}, out)
    _finish()


def test_iac_search_keeps_every_rank_identical_with_the_host_frozen(tmp_path):
    out = str(tmp_path / "iac.pt")
    _spawn(_iac_worker, out)
    res = torch.load(out)
    assert torch.equal(res["gathered"][0], res["gathered"][1])


def _dast_worker(rank, world, port, out):
    """DAST search steps under DDP (the transformer beside the lean conv edges): alpha identical on every rank; then a
    fixed network with a transformer on every active edge under nnU-Net's DDP wrapping (every parameter used)."""
    from nnunet_nas.config import DASTSearchConfig
    from nnunet_nas.planned_network import PlannedNetwork
    from nnunet_nas.registry import get_method
    _start(rank, world, port)
    torch.manual_seed(100 + rank)
    method, cfg = get_method("dast"), DASTSearchConfig(num_blocks=2, num_depths=2, channel_mul=0.125)
    planned = PlannedNetwork("none", patch_size=(16, 16))
    supernet = method.build_supernet(cfg, "dast_2d", 1, 2, 2, False, planned=planned)
    model = SearchNetwork(supernet, method.build_arch_params(cfg, supernet, "dast_2d"), method.make_weighting(cfg))
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    arch_opt = torch.optim.Adam(model.arch_parameters(), lr=0.05, betas=(0.5, 0.999))
    for step in range(2):
        arch_opt.zero_grad()
        ddp(torch.randn(2, 1, 16, 16) * (rank + 1)).square().mean().backward()
        arch_opt.step()
    gathered = _gathered(torch.cat([p.detach().flatten() for p in model.arch_parameters()]), world)
    genotype = method.discretize(model.arch.state_dict(), "dast_2d")
    genotype.ops = [["transformer" if on else None for on in row] for row in genotype.arch_code_a]
    net = method.network_class(1, 2, deep_supervision=True, **method.fixed_network_kwargs(genotype, 0.125,
                                                                                           planned=planned))
    _train_under_nnunets_ddp(net, (2, 1, 16, 16))
    if rank == 0:
        torch.save({"gathered": gathered}, out)
    _finish()


def test_dast_search_keeps_alpha_identical_and_its_transformer_export_trains_under_ddp(tmp_path):
    out = str(tmp_path / "dast.pt")
    _spawn(_dast_worker, out)
    gathered = torch.load(out)["gathered"]
    assert torch.equal(gathered[0], gathered[1])
