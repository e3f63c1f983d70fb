"""Searches follow nnU-Net's plan: per-axis strides and kernels (nnunet_nas.geometry) in every search space, the
found networks and their genotypes, the memory model and the export; isotropic plans give the networks of before."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import TINY_CONFIGS, tiny_planned_block
from nnunet_nas.errors import PlansError
from nnunet_nas.genotypes.schema import GenotypeError, genotype_from_dict
from nnunet_nas.geometry import Geometry, fit_kernel, planned_geometry
from nnunet_nas.nnunet.search_network import SearchNetwork
from nnunet_nas.planned_network import PlannedNetwork
from nnunet_nas.registry import get_method

# nnU-Net's 3d_fullres plan of a 12 x 64 x 64 dataset at 5 x 1 x 1 mm (the planner's output, nnunetv2 2.8)
THICK_SLICES = {"strides": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2]],
                "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]}
THICK_SLICES_2D = {"strides": [[1, 1], [1, 2], [2, 2], [2, 2]], "kernel_sizes": [[1, 3], [3, 3], [3, 3], [3, 3]]}
GRID_METHODS, SEARCHED_SPACES = ("dints", "dast"), ("dints", "dast", "scnas")


def planned(dims, geometry=None, patch=None, stages=None) -> PlannedNetwork:
    """The tiny plan of the helpers with ``geometry`` (``{"strides", "kernel_sizes"}``) or ``stages`` isotropic
    stages."""
    block = tiny_planned_block(dims)
    if geometry is None:
        geometry = {"strides": [[1] * dims] + [[2] * dims] * (stages - 1), "kernel_sizes": [[3] * dims] * stages}
    n = len(geometry["strides"])
    block["arch_kwargs"].update(n_stages=n, features_per_stage=[4 * 2 ** min(i, 2) for i in range(n)],
                                n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[1] * (n - 1), **geometry)
    return PlannedNetwork.from_block(block, patch_size=patch)


def thick(dims):
    return THICK_SLICES if dims == 3 else THICK_SLICES_2D


# ------------------------------------------------------------------------------------------- the geometry itself
def test_geometry_of_a_plan_cut_or_extended_to_a_space():
    plan = Geometry.from_plan(THICK_SLICES, 3)
    assert plan.divisor == (2, 16, 16) and plan.scale(2) == (1, 4, 4) and not plan.is_isotropic
    three, note = plan.fit(3)
    assert note is None and three.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2)) and three.divisor == (1, 4, 4)
    assert three.shape([12, 64, 64], 2) == (12, 16, 16)
    seven, note = plan.fit(7)  # the plan has 4 down-samplings, the space 6: two levels keep the coarsest resolution
    assert seven.strides[5:] == ((1, 1, 1),) * 2 and seven.kernels[5:] == ((3, 3, 3),) * 2
    assert seven.divisor == plan.divisor and "last 2 levels keep the plan's coarsest resolution" in note
    assert Geometry.from_dict(seven.to_dict(), 3) == seven
    assert plan.output_strides(2) == [[1, 1, 1], [1, 2, 2], [1, 2, 2]]
    assert three.output_strides(4)[3:] == [[1, 2, 2], [1, 2, 2]]  # past the last stage its stride repeats
    assert Geometry.isotropic(2, 3).is_isotropic and Geometry.from_plan({"n_stages": 3}, 2) is None
    geometry, note = planned_geometry(None, 3, 3)
    assert geometry == Geometry.isotropic(3, 3) and "isotropic" in note


@pytest.mark.parametrize("strides,kernels,message", [
    ([[1, 1], [3, 2]], [[3, 3], [3, 3]], "other than 1 or 2"),
    ([[1, 1], [2, 2]], [[3, 3], [2, 3]], "even size"),
    ([[2, 2], [2, 2]], [[3, 3], [3, 3]], "first stage's stride"),
    ([[1, 1], [2, 2]], [[3, 3]], "2 strides but 1 kernel sizes"),
    ([[1, 1], [2, 2.0]], [[3, 3], [3, 3]], "positive integers"),
    ([[1, 1, 1]], [[3, 3, 3]], "2 positive integers per stage"),
])
def test_a_plan_geometry_the_spaces_cannot_follow_is_one_clear_error(strides, kernels, message):
    with pytest.raises(PlansError, match=message):
        Geometry.from_plan({"strides": strides, "kernel_sizes": kernels}, 2)


def test_ops_do_not_convolve_the_axes_the_plan_does_not():
    assert fit_kernel(3, [1, 3, 3], 3) == (1, 3, 3)
    assert fit_kernel((3, 3, 1), [1, 3, 3], 3) == (1, 3, 1)  # P3D's in-plane part
    assert fit_kernel((3, 1, 1), [1, 3, 3], 3) == (1, 1, 1)  # P3D 1x3x3's through-plane part becomes pointwise
    assert fit_kernel(5, [3, 3], 2) == (5, 5)  # the op keeps its own size where the plan convolves
    assert fit_kernel(3, None, 2) == (3, 3)


# ------------------------------------------------------------------------------------------- the search spaces
def _supernet(name, dims, plan, patch):
    method, cfg = get_method(name), TINY_CONFIGS[name]
    op_set = method.op_set_for(cfg, dims)
    sup = method.build_supernet(cfg, op_set, 1, 3, dims, True, planned=replace(plan, patch_size=tuple(patch)))
    return method, cfg, op_set, SearchNetwork(sup, method.build_arch_params(cfg, sup, op_set),
                                              method.make_weighting(cfg))


def _conv_kernels(module):
    return {tuple(m.kernel_size) for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", SEARCHED_SPACES)
def test_supernet_and_found_network_follow_an_anisotropic_plan(name, dims):
    torch.manual_seed(0)
    plan = planned(dims, thick(dims))
    geometry, _ = get_method(name).search_geometry(TINY_CONFIGS[name], plan, dims)
    assert geometry.strides[1] == tuple(thick(dims)["strides"][1])
    patch = [2 * d for d in geometry.divisor]
    method, cfg, op_set, net = _supernet(name, dims, plan, patch)
    assert net.supernet.geometry == geometry
    x = torch.randn(2, 1, *patch)
    outs = net(x)
    assert [tuple(o.shape[2:]) for o in outs] == [geometry.shape(patch, r) for r in range(len(outs))]
    sum(o.float().mean() for o in outs).backward()
    assert all(p.grad is not None for p in net.arch.parameters())
    # no conv convolves an axis where the plan has kernel 1 at the first levels (kernel 1 on the first axis)
    flat = [s for s, k in enumerate(geometry.kernels) if k[0] == 1]
    assert flat and (1,) + (3,) * (dims - 1) in _conv_kernels(net.supernet)
    genotype = method.discretize({k: v.detach() for k, v in net.arch.state_dict().items()}, op_set, cfg=cfg)
    genotype.geometry = geometry
    genotype = genotype_from_dict(json.loads(json.dumps(genotype.to_dict())))  # the JSON carries it
    assert genotype.geometry == geometry
    kwargs = method.fixed_network_kwargs(genotype, 0.25, planned=replace(plan, patch_size=tuple(patch)))
    fixed = method.network_class(1, 3, deep_supervision=True, **kwargs)
    assert fixed.geometry == geometry and kwargs["strides"][:3] == [list(s) for s in geometry.strides[:3]]
    outs = fixed(x)
    assert len(outs) == len(kwargs["strides"]) - 1
    assert [tuple(o.shape[2:]) for o in outs] == [geometry.shape(patch, r) for r in range(len(outs))]
    sum(o.float().mean() for o in outs).backward()
    assert [n for n, p in fixed.named_parameters() if p.grad is None] == []


def test_grid_cell_parameters_counted_by_hand_at_an_in_plane_kernel():
    """One grid cell of 4 channels with every DiNTS op, at a level where nnU-Net plans 1x3x3 kernels: each conv
    keeps its in-plane taps only (weights C x C x taps, norms 2C)."""
    from nnunet_nas.ops.catalog import op_specs
    from nnunet_nas.spaces.grid import GridCell
    c, norm = 4, 2 * 4
    cell = GridCell(c, c, 0, 3, op_specs("dints_3d"), planned_kernel=(1, 3, 3))
    by_op = {name: sum(p.numel() for p in op.parameters()) for name, op in cell.ops.items()}
    assert by_op == {"skip": 0,
                     "conv_3x3x3": c * c * 9 + norm,  # 1x3x3
                     "p3d_3x3x1": c * c * 3 + c * c * 3 + norm,  # 1x3x1 then 1x1x3
                     "p3d_3x1x3": c * c * 3 + c * c * 3 + norm,  # 1x1x3 then 1x3x1
                     "p3d_1x3x3": c * c * 9 + c * c * 1 + norm}  # 1x3x3 then 1x1x1
    iso = GridCell(c, c, 0, 3, op_specs("dints_3d"))
    assert sum(p.numel() for p in iso.parameters()) == (c * c * 27 + norm) + 3 * (c * c * 9 + c * c * 3 + norm)


def test_scnas_cells_resample_by_the_plans_strides():
    from nnunet_nas.networks.scnas_net import SCNASNet
    geometry = Geometry.from_plan(THICK_SLICES, 3).fit(4)[0]
    net = SCNASNet(1, 2, None, 3, 0.125, num_nodes=2, geometry=geometry)
    reduction = net.cells[0]  # level 0 -> 1: stride (1, 2, 2)
    assert reduction.edge_ops[0].ops["max_pool_3"].pool.stride == (1, 2, 2)
    assert reduction.edge_ops[0].ops["max_pool_3"].pool.kernel_size == (1, 3, 3)  # level 1 plans 1x3x3
    expansion = net.cells[7]  # level 3 -> 2: up-sampling by stage 3's stride (2, 2, 2)
    assert expansion.kind == "expansion" and expansion.preprocess["1"].scale == (2, 2, 2)
    assert net.cells[0].preprocess["0"].__class__.__name__ in ("Identity", "ActConvNorm")


def test_dast_token_grid_follows_each_levels_real_shape():
    plan = planned(3, THICK_SLICES)
    method, cfg, op_set, net = _supernet("dast", 3, plan, [4, 32, 32])  # level 0 is 4 x 16 x 16, level 1 4 x 8 x 8
    grids = {net.supernet.space.cells[name].ops["transformer"].token_grid for name in net.supernet.space.cells}
    assert grids == {(4, 8, 8)}
    op = net.supernet.space.cells["b0_e0"].ops["transformer"]
    assert tuple(op.pos.shape) == (3, 4, 8, 8)


def test_memory_model_counts_the_levels_real_shapes():
    from nnunet_nas.arch.memory import MEASURED_TOLERANCE, GridMemoryModel, saved_activation_elements
    from nnunet_nas.discretize.grid_path import decode_grid_codes
    from nnunet_nas.genotypes.monai_compat import from_monai_codes
    from nnunet_nas.methods.dints import fixed_network_kwargs
    from nnunet_nas.networks.dints_net import DiNTSNet
    geometry = Geometry.from_plan(THICK_SLICES, 3).fit(4)[0]
    model = GridMemoryModel(2, 3, [8, 16, 32], 3, "dints_3d", geometry=geometry)
    scales = [np.prod(geometry.scale(o + 1)) for o in model._topo.edge_out]
    np.testing.assert_allclose(model.unit_size.numpy(), [[8, 16, 32][o] / s for o, s in
                                                         zip(model._topo.edge_out, scales)])
    rng = np.random.RandomState(0)
    g = from_monai_codes(*decode_grid_codes(rng.normal(0, 2, (4, 7)), rng.normal(0, 2, (4, 7, 5))))
    g.geometry = geometry
    net = DiNTSNet(1, 3, deep_supervision=True, **fixed_network_kwargs(g, 0.25))
    patch = [8, 32, 32]
    measured = saved_activation_elements(net, torch.randn(2, 1, *patch))
    assert abs(2 * net.compute_conv_feature_map_size(patch) / measured - 1) <= MEASURED_TOLERANCE


# ------------------------------------------------------------------------------------------- isotropic: as before
# parameter counts, deep-supervision strides and output sums of the supernets and of a found network of each method
# (tiny configs, seeds 0 / 1 / 2, an isotropic plan of five stages), measured with the code before plan geometries
ISOTROPIC = {
    ("dints", 2): (43162, 30769, [[1, 1], [2, 2], [2, 2], [2, 2]], -77.9714862704277),
    ("dints", 3): (91882, 90321, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], 425.70625005476177),
    ("dast", 2): (51034, 64721, [[1, 1], [2, 2], [2, 2], [2, 2]], -23.33259897492826),
    ("dast", 3): (104330, 121585, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], -2405.8444076320156),
    ("scnas", 2): (90662, 111132, [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], 4.7948740078136325),
    ("scnas", 3): (216446, 531468, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], -494.2941418644041),
}


@pytest.mark.parametrize("name,dims", sorted(ISOTROPIC))
def test_an_isotropic_plan_gives_the_networks_of_before(name, dims):
    supernet_params, fixed_params, strides, out_sum = ISOTROPIC[name, dims]
    method, cfg = get_method(name), TINY_CONFIGS[name]
    patch, op_set = [16] * dims, method.op_set_for(cfg, dims)
    plan = planned(dims, stages=5, patch=patch)
    torch.manual_seed(0)
    sup = method.build_supernet(cfg, op_set, 2, 3, dims, True, planned=plan)
    arch = method.build_arch_params(cfg, sup, op_set)
    genotype = method.discretize(dict(arch.state_dict()), op_set, cfg=cfg)
    kwargs = method.fixed_network_kwargs(genotype, 0.25, planned=plan)
    torch.manual_seed(1)
    fixed = method.network_class(2, 3, deep_supervision=True, **kwargs)
    torch.manual_seed(2)
    with torch.no_grad():
        total = float(sum(o.double().sum() for o in fixed(torch.randn(1, 2, *patch))))
    assert sum(p.numel() for p in sup.parameters()) == supernet_params
    assert sum(p.numel() for p in fixed.parameters()) == fixed_params
    assert kwargs["strides"] == strides and total == pytest.approx(out_sum, rel=1e-4, abs=1e-3)


# ------------------------------------------------------------------------------------------- genotypes and export
def test_genotypes_written_before_geometries_load_as_isotropic():
    from nnunet_nas.cli import published_genotype_path
    from nnunet_nas.genotypes.grid import GridGenotype
    from nnunet_nas.networks.dints_net import DiNTSNet
    old = GridGenotype.load(published_genotype_path())  # version 1, as the published architecture ships
    assert old.geometry is None
    net = DiNTSNet(1, 2, old, channel_mul=0.125)
    assert net.geometry.is_isotropic and net.divisor == (16, 16, 16)
    d = old.to_dict()
    assert d["version"] == 2 and d["geometry"] is None
    d["geometry"] = Geometry.from_plan(THICK_SLICES, 3).to_dict()  # 5 stages for a grid of 4 levels: fits
    assert GridGenotype.from_dict(d).geometry.divisor == (2, 16, 16)
    d["geometry"] = Geometry.from_plan(THICK_SLICES, 3).fit(3)[0].to_dict()
    with pytest.raises(GenotypeError, match="geometry has 3 stages, a grid of D=4 levels needs D \\+ 1 = 5"):
        GridGenotype.from_dict(d)
    d["geometry"] = {"strides": [[1, 1, 1]] * 5}
    with pytest.raises(GenotypeError, match="'strides' and 'kernels'"):
        GridGenotype.from_dict(d)


def _plans_file(tmp_path, configurations, labels=None, channels=1, regions=False):
    plans = {"dataset_name": "Dataset999_Geometry", "plans_name": "nnUNetPlans", "configurations": configurations}
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    labels = labels or {"background": 0, "a": 1, "b": 2}
    dataset = {"channel_names": {str(i): f"c{i}" for i in range(channels)}, "labels": labels, "numTraining": 2,
               "file_ending": ".nii.gz"}
    if regions:
        dataset["regions_class_order"] = [1, 2, 3]
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    return str(tmp_path / "nnUNetPlans.json"), plans


def _configuration(dims, geometry, patch, **extra):
    block = tiny_planned_block(dims)
    block["arch_kwargs"].update(geometry, n_stages=len(geometry["strides"]),
                                features_per_stage=[4] * len(geometry["strides"]),
                                n_conv_per_stage=[1] * len(geometry["strides"]),
                                n_conv_per_stage_decoder=[1] * (len(geometry["strides"]) - 1))
    return dict({"patch_size": patch, "batch_size": 2, "data_identifier": "x", "architecture": block}, **extra)


@pytest.mark.parametrize("name", ["dints", "scnas"])
def test_export_writes_the_searched_geometry_and_keeps_nnunets_patch(tmp_path, name):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_nas.nnunet.export import register_searched_configuration
    path, _ = _plans_file(tmp_path, {"3d_fullres": _configuration(3, THICK_SLICES, [12, 64, 64])})
    method, cfg = get_method(name), TINY_CONFIGS[name]
    plan = PlannedNetwork.from_configuration_manager(PlansManager(path).get_configuration("3d_fullres"))
    geometry, _ = method.search_geometry(cfg, plan, 3)
    op_set = method.op_set_for(cfg, 3)
    sup = method.build_supernet(cfg, op_set, 1, 3, 3, True, planned=plan)
    genotype = method.discretize(dict(method.build_arch_params(cfg, sup, op_set).state_dict()), op_set, cfg=cfg)
    genotype.geometry = geometry
    logs = []
    used = register_searched_configuration(path, "3d_fullres", method, genotype, 0.125, log=logs.append)
    cm = PlansManager(path).get_configuration(used)
    assert list(cm.patch_size) == [12, 64, 64] and not any("patch size" in line for line in logs)
    written = cm.network_arch_init_kwargs["genotype"]["geometry"]
    assert written["strides"] == THICK_SLICES["strides"][:geometry.num_stages]
    assert written["kernels"] == THICK_SLICES["kernel_sizes"][:geometry.num_stages]
    assert cm.pool_op_kernel_sizes[:geometry.num_stages] == THICK_SLICES["strides"][:geometry.num_stages]
    fixed = nnUNetTrainer.build_network_architecture(PlansManager(path), cm, 1, 3, False)
    assert tuple(fixed(torch.randn(1, 1, 12, 64, 64)).shape) == (1, 3, 12, 64, 64)


def test_export_counts_outputs_and_inputs_as_nnunet_does(tmp_path):
    """Regions: one head per region; the ignore label: no head; a cascade stage: the previous stage's one-hot
    foreground labels added to the image channels."""
    from nnunet_nas.nnunet.export import network_channels
    iso = {"strides": [[1] * 3, [2] * 3], "kernel_sizes": [[3] * 3] * 2}
    configurations = {"3d_lowres": _configuration(3, iso, [16] * 3, next_stage="3d_cascade_fullres"),
                      "3d_fullres": _configuration(3, iso, [16] * 3),
                      "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}
    (tmp_path / "plain").mkdir()
    path, plans = _plans_file(tmp_path / "plain", configurations)
    assert network_channels(path, plans, "3d_fullres") == (1, 3)
    assert network_channels(path, plans, "3d_cascade_fullres") == (1 + 2, 3)
    (tmp_path / "regions").mkdir()
    path, plans = _plans_file(tmp_path / "regions", configurations, channels=4, regions=True,
                              labels={"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]})
    assert network_channels(path, plans, "3d_fullres") == (4, 3)
    (tmp_path / "ignore").mkdir()
    path, plans = _plans_file(tmp_path / "ignore", configurations,
                              labels={"background": 0, "a": 1, "b": 2, "c": 3, "ignore": 4})
    assert network_channels(path, plans, "3d_fullres") == (1, 4)


def test_the_papers_isotropic_space_stays_an_option():
    from nnunet_nas.config import DiNTSSearchConfig
    method, plan = get_method("dints"), planned(3, THICK_SLICES)
    cfg = replace(TINY_CONFIGS["dints"], follow_plan_geometry=False)
    geometry, note = method.search_geometry(cfg, plan, 3)
    assert geometry == Geometry.isotropic(3, 3) and "follow_plan_geometry=False" in note
    sup = method.build_supernet(cfg, method.op_set_for(cfg, 3), 1, 2, 3, True, planned=plan)
    assert sup.geometry == geometry
    with pytest.raises(Exception, match="follow_plan_geometry"):
        replace(DiNTSSearchConfig(), follow_plan_geometry="yes").validate()


@pytest.mark.parametrize("dims", [2, 3])
def test_iac_cells_follow_the_hosts_planned_kernels(dims):
    method, cfg = get_method("iac"), TINY_CONFIGS["iac"]
    plan = planned(dims, thick(dims))
    patch = [2 * d for d in Geometry.from_plan(thick(dims), dims).divisor]
    op_set = method.op_set_for(cfg, dims)
    sup = method.build_supernet(cfg, op_set, 1, 3, dims, True, planned=replace(plan, patch_size=tuple(patch)))
    kernels = [k for k in thick(dims)["kernel_sizes"]]
    for level, cell in enumerate(sup.cells):  # the first level plans kernel 1 through-plane: so do its ops
        flat = kernels[level][0] == 1
        assert all(k[0] == 1 for k in _conv_kernels(cell)) == flat, level
    net = SearchNetwork(sup, method.build_arch_params(cfg, sup, op_set), method.make_weighting(cfg))
    outs = net(torch.randn(2, 1, *patch))
    sum(o.float().mean() for o in outs).backward()
    assert all(p.grad is not None for p in net.arch.parameters())


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("geometry", [
    Geometry(((1, 1, 1), (1, 2, 2), (1, 2, 2)), ((1, 3, 3), (1, 3, 3), (3, 3, 3))),  # thick slices
    Geometry(((1, 1, 1), (2, 2, 2), (1, 1, 1)), ((3, 3, 3),) * 3),  # a plan with fewer down-samplings than levels
])
def test_lean_cpu_edges_give_plain_autograds_values_and_gradients_at_any_geometry(geometry, batch):
    from nnunet_nas.arch.params import GridArchParams
    from nnunet_nas.arch.weighting import GridEdgeOpWeighting
    from nnunet_nas.networks.dints_net import DiNTSNet
    torch.manual_seed(0)
    net = DiNTSNet(1, 2, None, num_blocks=2, num_depths=2, channel_mul=0.125, geometry=geometry)
    arch = GridArchParams(2, 2, 5)
    x = torch.randn(batch, 1, *[8 * d for d in geometry.divisor])
    params = list(net.parameters()) + list(arch.parameters())
    results = []
    for recompute in (True, False):
        net.space.recompute_norms = recompute
        for p in params:
            p.grad = None
        y = net(x, GridEdgeOpWeighting()(arch))
        y.square().mean().backward()
        results.append([y.detach()] + [p.grad.clone() for p in params])
    (lean_out, *lean_grads), (plain_out, *plain_grads) = results  # equal up to float32 summation order
    torch.testing.assert_close(lean_out, plain_out, rtol=1e-4, atol=1e-5 * float(plain_out.abs().max()))
    lean, plain = torch.cat([g.flatten() for g in lean_grads]), torch.cat([g.flatten() for g in plain_grads])
    assert float((lean - plain).norm() / plain.norm()) < 1e-4


def test_checkpoints_and_genotypes_of_before_keep_the_isotropic_space():
    """A 0.1 search checkpoint holds no follow_plan_geometry: --c with today's default names the difference instead
    of resuming in another space, and its export is isotropic; a 0.1 IAC genotype keeps isotropic cells on any
    host, so the models trained from it still load."""
    from nnunet_nas.methods.iac import IACUNet
    from nnunet_nas.nnunet.search_state import differing_settings, saved_search_config
    old = TINY_CONFIGS["dints"].to_dict()
    del old["follow_plan_geometry"]
    state = {"method": "dints", "op_set": "dints_3d", "search_config": old}
    assert saved_search_config(state)["follow_plan_geometry"] is False
    lines = differing_settings(state, {"method": "dints", "op_set": "dints_3d",
                                       "search_config": TINY_CONFIGS["dints"].to_dict()})
    assert lines == ["search_config.follow_plan_geometry: False in the checkpoint, True now"]
    method, cfg = get_method("iac"), TINY_CONFIGS["iac"]
    plan = planned(3, THICK_SLICES)
    sup = method.build_supernet(cfg, method.op_set_for(cfg, 3), 1, 3, 3, True, planned=plan)
    genotype = method.discretize(dict(method.build_arch_params(cfg, sup, "darts_3d").state_dict()), "darts_3d",
                                 cfg=cfg)
    assert genotype.geometry is None  # as a 0.1 export wrote it
    kwargs = method.fixed_network_kwargs(genotype, None, planned=plan)
    assert all(len(set(k)) == 1 for k in _conv_kernels(IACUNet(1, 3, **kwargs).cells[0]))  # cubic kernels
    genotype.geometry = method.search_geometry(cfg, plan, 3)[0]  # as today's export writes it
    kwargs = method.fixed_network_kwargs(genotype, None, planned=plan)
    assert all(k[0] == 1 for k in _conv_kernels(IACUNet(1, 3, **kwargs).cells[0]))


def test_per_stage_integer_strides_are_read_as_nnunets_unets_read_them():
    geometry = Geometry.from_plan({"strides": [1, 2, [1, 2, 2]], "kernel_sizes": [3, [1, 3, 3], 3]}, 3)
    assert geometry.strides == ((1, 1, 1), (2, 2, 2), (1, 2, 2)) and geometry.kernels[1] == (1, 3, 3)
    with pytest.raises(PlansError, match="follow_plan_geometry=False"):
        planned_geometry(planned(2, {"strides": [[1, 1], [3, 2]], "kernel_sizes": [[3, 3], [3, 3]]}), 2, 2)
