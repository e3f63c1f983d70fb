"""Every registered method's search stays identical on every rank under DDP (2 CPU processes, gloo), workers
parametrised over the registry.

nnU-Net's own ``-num_gpus`` path asserts CUDA, so one worker exercises the module arrangement the search trainer
uses under DDP: the SearchNetwork (supernet + alpha) wrapped with ``find_unused_parameters=True``, different data
on each rank, architecture steps with Adam, weight steps with alpha frozen, the JSD rule's pruning decisions. Another
runs the real search trainer on the tiny planned dataset, its set-up and steps nnU-Net's and ours, with only what
nnU-Net's set-up assumes of CUDA (the device it moves each rank to) undone.
"""

import gc
import math
import os
import socket
import weakref

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
    """All ranks meet before the group is torn down, and no DDP wrapper outlives it: a rank that destroys gloo's
    group while another still talks to it, or a wrapper's reducer freed after the group is gone, can abort the
    process ("terminate called without an active exception"). Callers drop their wrappers first; reference cycles
    holding one (a trainer's) are collected here."""
    gc.collect()
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
    del ddp
    _finish()


@pytest.mark.parametrize("name", method_names())
def test_search_keeps_every_rank_identical_and_its_export_trains_under_ddp(name, tmp_path):
    out = str(tmp_path / f"{name}.pt")
    _spawn(_search_worker, name, out)
    res = torch.load(out)
    assert res["pruned"] > 0  # the JSD rule pruned: its masks are among the compared tensors
    assert torch.equal(res["gathered"][0], res["gathered"][1])


class _OnCPU:
    """What nnU-Net's DDP set-up assumes of CUDA, undone for the test: under DDP its ``__init__`` moves the trainer to
    ``cuda:<rank>`` (and makes CUDA grad scalers); here every rank stays on the CPU. Nothing else changes."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cpu")):  # nnU-Net records its init arguments by name
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.device = torch.device("cpu")
        self.grad_scaler = self.arch_grad_scaler = None


def _watch_ddp_constructions() -> list:
    """From now on, per DDP construction in this process: how many other DDP wrappers were alive at that moment."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    alive, log, init = weakref.WeakSet(), [], DDP.__init__

    def counting_init(self, *args, **kwargs):
        log.append(len(alive))
        init(self, *args, **kwargs)
        alive.add(self)
    DDP.__init__ = counting_init
    return log


def _real_trainer_worker(rank, world, port, method, out):
    """Method ``method``'s tiny search trainer (tests/fixtures/trainers), found by nnU-Net's lookup and set up by its
    own initialize and on_train_start under DDP: three search iterations (architecture and weight step) with an
    epoch end between them, operation pruning (ops 0 and 1 kept on every edge) before the third."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    import nnunetv2.run.run_training as run_training
    from helpers import DATASET_NAME, SEARCH_TEST_TRAINERS
    _start(rank, world, port)
    constructions = _watch_ddp_constructions()
    name, configuration = SEARCH_TEST_TRAINERS[method]
    find = run_training.recursive_find_trainer_class_by_name
    run_training.recursive_find_trainer_class_by_name = lambda n: type(n, (_OnCPU, find(n)), {})
    trainer = run_training.get_trainer_from_args(DATASET_NAME, configuration, 0, name, device=torch.device("cpu"))
    trainer.on_train_start()  # nnU-Net's initialize (its DDP wrap), data streams
    res = {"after_initialize": list(constructions)}
    trainer.current_epoch = trainer.warmup_epochs  # an epoch with architecture steps
    trainer.on_train_epoch_start()
    outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(2)]
    res["outputs_are_tensors"] = all(isinstance(o["arch_loss"], torch.Tensor) for o in outputs)
    trainer.on_train_epoch_end(outputs)  # read once here; nnU-Net gathers the ranks' losses
    res["train_loss"] = float(trainer.logger.get_value("train_losses", step=-1))
    net = trainer._unwrap()
    alive = torch.zeros_like(net.arch.op_logits, dtype=torch.bool)
    alive[..., :2] = True
    modules = len(list(net.modules()))
    trainer.apply_op_pruning(alive)  # the same decision on every rank, as _apply_strategy_decisions makes it
    res["modules_removed"] = len(list(net.modules())) < modules
    trainer.train_step(next(trainer.dataloader_train))
    res["constructions"] = list(constructions)
    res["layers"] = [type(trainer.network).__name__, type(trainer.network.module).__name__]
    res["find_unused_parameters"] = isinstance(trainer.network, DDP) and trainer.network.find_unused_parameters
    res["arch_steps_done"] = trainer.arch_steps_done
    state = [v.detach().float().flatten() for v in net.state_dict().values()]  # alpha, alive mask, weights
    res["gathered"] = _gathered(torch.cat(state), world)
    if rank == 0:
        torch.save(res, out)
    del trainer, net
    _finish()


@pytest.mark.parametrize("method", ["scnas", "iac"])
def test_the_real_search_trainer_wraps_once_and_keeps_every_rank_identical(method, nnunet_in_process, tmp_path):
    """The search trainer's own DDP set-up (one wrapper, made once with find_unused_parameters, re-made when pruning
    removed modules only after the old one is gone) and steps keep alpha and weights identical on both ranks. SCNAS:
    sampled ops leave weights unused, and its pruning removes op modules (a re-wrap); IAC: a host frozen before the
    wrap. (The set-up is the same code for every method; the bi-level steps of every registered method run under DDP
    in test_search_keeps_every_rank_identical_and_its_export_trains_under_ddp.)"""
    from helpers import SEARCH_TEST_TRAINERS, fake_trained_host
    from nnunet_nas.registry import get_method
    if get_method(method).trained_host:  # IAC: its host frozen before the wrap
        fake_trained_host(nnunet_in_process, SEARCH_TEST_TRAINERS[method][1])
    out = str(tmp_path / "res.pt")
    _spawn(_real_trainer_worker, method, out)
    res = torch.load(out)
    assert res["after_initialize"] == [0]  # one construction in initialize, no other wrapper alive
    # pruning that removed modules re-wraps: the old wrapper is dropped before the new one is made
    assert res["constructions"] == ([0, 0] if res["modules_removed"] else [0])
    assert res["modules_removed"] or method != "scnas"  # SCNAS removes the pruned op modules
    assert res["layers"] == ["DistributedDataParallel", "SearchNetwork"] and res["find_unused_parameters"]
    assert res["outputs_are_tensors"] and res["arch_steps_done"] == 3 and math.isfinite(res["train_loss"])
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
