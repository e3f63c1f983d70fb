"""Contract tests over every registered method (timm's pattern): a method that registers itself gets these for free.

Per method and per 2-D / 3-D: the supernet runs forward and backward with the deep-supervision outputs nnU-Net
expects, every architecture parameter and every weight of the modules that ran (a sampling weighting runs some ops
only) gets a finite gradient, the two parameter sets are
disjoint; discretised logits give a genotype that survives JSON and reads back its spatial_dims; export registers a
configuration that nnU-Net's stock trainer builds; the JSD pruning strategy prunes its ops and the pruned supernet
still runs; and a search trainer for the method is found by nnU-Net's own trainer lookup.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from nnunet_nas.arch.weighting import SampledOpWeights
from nnunet_nas.config import SearchConfig
from nnunet_nas.genotypes.schema import genotype_from_dict
from nnunet_nas.nnunet.export import register_searched_configuration
from nnunet_nas.nnunet.search_network import SearchNetwork
from nnunet_nas.patch import round_up_patch
from nnunet_nas.registry import get_method, method_names
from nnunet_nas.strategies.base import SearchProgress
from nnunet_nas.strategies.jsd_pruning import JSDRule, JSDStabilityPruning
from nnunet_nas.strategies.pruning import prune_search_network

from helpers import TINY_CONFIGS, tiny_planned, tiny_planned_block

CASES = [(name, dims) for name in method_names() for dims in (2, 3)]
IDS = [f"{n}-{d}d" for n, d in CASES]


def _search_network(name, dims, in_ch=1, classes=3):
    """``name``'s search network as the search trainer builds it (its memory in nnU-Net's terms attached)."""
    from nnunet_nas.nnunet.search_memory import count_export_memory
    method, cfg = get_method(name), TINY_CONFIGS[name]
    op_set = method.op_set_for(cfg, dims)
    planned = tiny_planned(dims, _patch(method, cfg, dims))
    supernet = method.build_supernet(cfg, op_set, in_ch, classes, dims, True, planned=planned)
    net = SearchNetwork(supernet, method.build_arch_params(cfg, supernet, op_set), method.make_weighting(cfg))
    net.export_memory = count_export_memory(method, cfg, planned, in_ch, classes)
    return method, cfg, op_set, net


def _patch(method, cfg, dims):
    geometry, _ = method.search_geometry(cfg, tiny_planned(dims), dims)
    return [16] * dims if geometry is None else [max(2 * d, 16) for d in geometry.divisor]


def test_every_method_has_a_tiny_config_and_a_config_extending_the_base():
    assert sorted(TINY_CONFIGS) == method_names()
    for name in method_names():
        method = get_method(name)
        assert issubclass(method.config_class, SearchConfig)
        assert json.loads(json.dumps(method.config_class().to_dict())) == method.config_class().to_dict()


@pytest.mark.parametrize("name,dims", CASES, ids=IDS)
def test_supernet_forward_backward_reaches_every_parameter(name, dims):
    torch.manual_seed(0)
    method, cfg, _, net = _search_network(name, dims)
    patch = _patch(method, cfg, dims)
    ran = set()  # modules with parameters that ran (a sampling weighting runs only some ops)
    hooks = [m.register_forward_hook(lambda m, i, o: ran.add(id(m))) for m in net.supernet.modules()
             if any(True for _ in m.parameters(recurse=False))]
    outs = net(torch.randn(2, 1, *patch))
    for h in hooks:
        h.remove()
    scales = (1 / np.cumprod(np.vstack(net.supernet.strides), axis=0))[:-1]  # what nnU-Net derives
    assert len(outs) == len(scales)
    for o, s in zip(outs, scales):
        assert list(o.shape) == [2, 3] + [int(p * f) for p, f in zip(patch, s)]
        assert torch.isfinite(o).all()
    sum(o.square().mean() for o in outs).backward()
    weights, arch = set(map(id, net.weight_parameters())), set(map(id, net.arch_parameters()))
    assert weights.isdisjoint(arch) and len(weights) + len(arch) == len(list(net.parameters()))
    used = list(net.named_parameters())
    if isinstance(net.weighting(net.arch), SampledOpWeights):  # only the sampled ops ran
        owner = {id(p): id(m) for m in net.modules() for p in m.parameters(recurse=False)}
        used = [(n, p) for n, p in used if n.startswith("arch.") or owner[id(p)] in ran]
    missing = [n for n, p in used if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == [] and len(used) > len(list(net.arch_parameters()))


@pytest.mark.parametrize("name,dims", CASES, ids=IDS)
def test_discretised_genotype_round_trips_through_json(name, dims, tmp_path):
    torch.manual_seed(1)
    method, cfg, op_set, net = _search_network(name, dims)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0, 2)
    state = net.arch.state_dict()
    g = method.discretize(state, op_set, {"method": name}, cfg=cfg)
    assert isinstance(g, method.genotype_class) and g.spatial_dims == dims
    back = genotype_from_dict(json.loads(json.dumps(g.to_dict())))
    assert back == g and back.spatial_dims == dims
    g.save(str(tmp_path / "g.json"))
    assert type(g).load(str(tmp_path / "g.json")) == g
    assert method.discretize(state, op_set, {"method": name}, cfg=cfg) == g  # deterministic


@pytest.mark.parametrize("name", method_names())
def test_every_method_records_how_far_its_search_separated(name):
    """The convergence figures of :mod:`nnunet_nas.convergence` come from every method's per-epoch record: about 0
    at the near-uniform initialisation, about 1 once one op (and, where the method chooses edges, one edge per
    decision) dominates."""
    torch.manual_seed(3)
    method, cfg, _, net = _search_network(name, 2)
    assert "arch_separation" in method.history_keys
    start = method.describe(net, cfg)
    assert 0.0 <= start["arch_separation"] < 0.05
    with torch.no_grad():
        net.arch.op_logits[..., -1] += 30.0  # the last op of every set computes something (never "zero")
        for key, p in net.arch.named_parameters():
            if key != "op_logits":  # the grid's edge gates, IAC's beta: one decision per edge or node
                p.copy_(torch.where(torch.arange(p.shape[-1]) % 2 == 0, 30.0, -30.0).expand_as(p))
    decided = method.describe(net, cfg)
    assert decided["arch_separation"] > 0.99
    assert decided.get("arch_edge_separation", 1.0) > 0.99 and ("arch_edge_separation" in decided) == (
        "arch_edge_separation" in method.history_keys)


@pytest.mark.parametrize("name,dims", CASES, ids=IDS)
def test_every_method_with_a_memory_model_in_nnunets_terms_logs_it_and_its_terms_reach_alpha(name, dims):
    """Where a method counts its memory against nnU-Net's planned network, the per-epoch record holds the ratio
    (within what the space spans) and every architecture-loss term is finite and reaches alpha."""
    torch.manual_seed(4)
    method, cfg, _, net = _search_network(name, dims)
    if method.count_export_memory is None:
        assert net.export_memory is None
        return
    counted = net.export_memory
    assert counted.reference > 0 and counted.max_ratio() > 0
    ratio = method.describe(net, cfg)["arch_memory_ratio"]
    assert "arch_memory_ratio" in method.history_keys and 0 < counted.min_ratio() <= ratio <= counted.max_ratio()
    terms = method.regularizers(net, replace(cfg, memory_budget=1e-3))  # a budget every architecture is above
    assert all(torch.isfinite(v) for v in terms.values()) and "memory" in terms
    sum(terms.values()).backward()
    assert net.arch.op_logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name,dims", CASES, ids=IDS)
def test_jsd_pruning_prunes_every_method_and_the_pruned_supernet_runs(name, dims):
    torch.manual_seed(2)
    method, cfg, op_set, net = _search_network(name, dims)
    with torch.no_grad():
        net.arch.op_logits.normal_(0, 2)
    if method.kept_edges is not None:  # the stop rule's edges are op_logits' edges
        kept = method.kept_edges(method.discretize(net.arch.state_dict(), op_set))
        assert tuple(kept.shape) == tuple(net.arch.op_logits.shape[:-1]) and kept.any()
    jsd = JSDStabilityPruning(JSDRule(window=1, threshold=1.0, gamma=1.0))  # every edge stable at the 2nd epoch
    assert jsd.on_epoch_end(net, SearchProgress(0, 3, 0, 1, 3)) is None
    alive = jsd.on_epoch_end(net, SearchProgress(1, 3, 0, 2, 3))
    assert alive is not None and alive.shape == net.arch.op_logits.shape and not alive.all()
    prune_search_network(net, alive)
    outs = net(torch.randn(1, 1, *_patch(method, cfg, dims)))
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name,dims", CASES, ids=IDS)
def test_export_registers_a_configuration_the_stock_trainer_builds(name, dims, tmp_path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    torch.manual_seed(2)
    method, cfg, op_set, net = _search_network(name, dims)
    g = method.discretize(net.arch.state_dict(), op_set, {"method": name})
    base = "3d_fullres" if dims == 3 else "2d"
    plans = {"dataset_name": "Dataset999_Contract", "plans_name": "nnUNetPlans", "configurations": {
        base: {"patch_size": [20] * dims, "batch_size": 2, "data_identifier": "x",
               "architecture": tiny_planned_block(dims)}}}
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(plans))
    used = register_searched_configuration(str(path), base, method, g, 0.125, log=lambda *a: None)
    assert used == f"{base}_{name}"
    cm = PlansManager(str(path)).get_configuration(used)
    assert round_up_patch(cm.patch_size, method.genotype_patch_divisor(g)) == list(cm.patch_size)
    fixed = nnUNetTrainer.build_network_architecture(PlansManager(str(path)), cm, 1, 3, True)
    assert isinstance(fixed, method.network_class)
    strides = cm.network_arch_init_kwargs["strides"]  # what nnU-Net's deep supervision reads
    outs = fixed(torch.randn(1, 1, *cm.patch_size))
    assert len(outs) == len(strides) - 1 and all(torch.isfinite(o).all() for o in outs)
    assert list(outs[0].shape) == [1, 3] + list(cm.patch_size)
    assert hasattr(fixed, "compute_conv_feature_map_size") and fixed.compute_conv_feature_map_size(cm.patch_size) > 0


def test_every_method_has_a_search_trainer_found_by_nnunets_lookup():
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunet_nas.nnunet import trainers
    from nnunet_nas.nnunet.environment import trainer_dir
    for name in method_names():
        found = [t for t in trainers.__all__ if getattr(getattr(trainers, t), "nas_method", None) == name]
        assert found, f"no search trainer for method {name!r} in nnunet_nas.nnunet.trainers"
        # the call nnU-Net makes for each nnUNet_extTrainer folder (nnunetv2.utilities.find_objects)
        cls = recursive_find_python_class(trainer_dir(), found[0], None, base_folder=trainer_dir(),
                                          cleanup_imports_from_base_folder=True)
        assert cls is not None and cls.nas_method == name


def test_cli_lists_every_method(capsys):
    from nnunet_nas.cli import main
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in method_names():
        assert f"{name}: " in out and f"configuration suffix: _{name}" in out
