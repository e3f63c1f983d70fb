"""DAST's pieces beyond the transformer op: its op sets, the transformer in the grid's memory model, token grids
per level, widths that divide among the heads, the fixed network's kwargs, and clear errors."""

import json

import numpy as np
import pytest
import torch

from nnunet_nas.arch.memory import MEASURED_TOLERANCE, GridMemoryModel, saved_activation_elements
from nnunet_nas.config import DASTSearchConfig
from nnunet_nas.genotypes.grid import GridGenotype
from nnunet_nas.genotypes.schema import GenotypeError
from nnunet_nas.networks.dints_net import DiNTSNet
from nnunet_nas.ops.catalog import get_op_set, op_names
from nnunet_nas.planned_network import PlannedNetwork
from nnunet_nas.registry import get_method


def _random_genotype(op_set, L=3, D=2, seed=0):
    from nnunet_nas.discretize.grid_path import decode_grid_codes
    from nnunet_nas.genotypes.monai_compat import from_monai_codes
    rng = np.random.RandomState(seed)
    n = len(op_names(op_set))
    return from_monai_codes(*decode_grid_codes(rng.normal(0, 2, (L, 3 * D - 2)), rng.normal(0, 2, (L, 3 * D - 2, n))),
                            op_set=op_set)


def test_op_sets_are_skip_conv_transformer_and_the_option_adds_the_factorised_ops_back():
    method = get_method("dast")
    assert op_names("dast_3d") == ("skip", "conv_3x3x3", "transformer")
    assert op_names("dast_2d") == ("skip", "conv_3x3", "transformer")
    assert op_names("dast_3d_p3d") == op_names("dints_3d") + ("transformer",)
    assert method.op_set_for(DASTSearchConfig(), 3) == "dast_3d"
    assert method.op_set_for(DASTSearchConfig(factorised_ops=True), 2) == "dast_2d_p2d"
    assert method.op_set_for(DASTSearchConfig(op_set="dints_3d"), 3) == "dints_3d"  # an explicit op set wins
    assert not get_op_set("dast_3d").ops[2].linear


def test_memory_model_counts_the_transformer_per_level_at_the_patch():
    """Hand check on a 2-level 3-D grid at patch 32^3: level 0 is 16^3 with 8^3 tokens, level 1 8^3 with 8^3 tokens;
    the transformer's cost per output element is Eq. 3 (as measured) over the output size."""
    model = GridMemoryModel(1, 2, [16, 32], 3, "dast_3d", patch_size=[32, 32, 32])
    t = op_names("dast_3d").index("transformer")
    topo_out = [0, 0, 1, 1]  # targets of the D=2 grid's edges 0->0, 1->0, 0->1, 1->1
    for e, level in enumerate(topo_out):
        c, side = (16, 16) if level == 0 else (32, 8)
        expected = (33 * c * 512 + 6 * 8 * 512 + c * side ** 3) / (c * side ** 3)
        assert float(model.op_cost[e, t]) == pytest.approx(expected)
        assert float(model.op_cost[e, 1]) == 3.0  # the conv stays linear
    # a patch other than the model's gets its own tables; linear ops do not care
    onehot = torch.zeros(1, 4, 3, dtype=torch.float64)
    onehot[..., t] = 1.0
    on = torch.ones(1, 4, dtype=torch.float64)
    at_64 = float(model.expected(on, onehot, [64, 64, 64]))
    assert at_64 == pytest.approx(float(GridMemoryModel(1, 2, [16, 32], 3, "dast_3d", [64] * 3).expected(
        on, onehot, [64, 64, 64])))
    assert at_64 < 8 * float(model.expected(on, onehot, [32, 32, 32]))  # the token term does not grow with the patch
    with pytest.raises(ValueError, match="give the patch size"):
        GridMemoryModel(1, 2, [16, 32], 3, "dast_3d")


def test_budget_makes_transformers_cost_memory_in_the_expected_ratio():
    """Putting all weight on the transformer instead of the conv raises M_e/M_ref by exactly the table difference."""
    model = GridMemoryModel(2, 2, [16, 32], 2, "dast_2d", patch_size=[64, 48])
    on = torch.ones(2, 4, dtype=torch.float64)
    conv, tr = torch.zeros(2, 4, 3, dtype=torch.float64), torch.zeros(2, 4, 3, dtype=torch.float64)
    conv[..., 1], tr[..., 2] = 1.0, 1.0
    diff = float(model.ratio(on, tr, "max_discrete") - model.ratio(on, conv, "max_discrete"))
    unit = model.unit_size[:, None] * (model.op_cost[:, 2:3] - model.op_cost[:, 1:2])
    assert diff == pytest.approx(2 * float(unit.sum()) / model._max_unit)
    assert model.max_ratio("max_discrete") == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_dast_network_estimate_matches_what_autograd_keeps(seed):
    g = _random_genotype("dast_3d", L=4, D=3, seed=seed)
    assert "transformer" in sum(g.ops, [])
    kwargs = get_method("dast").fixed_network_kwargs(g, 0.25, planned=PlannedNetwork("x", patch_size=(32, 32, 32)))
    net = DiNTSNet(1, 3, deep_supervision=True, **kwargs)
    measured = saved_activation_elements(net, torch.randn(2, 1, 32, 32, 32))
    estimate = 2 * net.compute_conv_feature_map_size([32, 32, 32])
    assert abs(estimate / measured - 1) <= MEASURED_TOLERANCE, (estimate, measured)


def test_fixed_network_kwargs_carry_patch_token_grid_heads_and_round_trip_through_json():
    g = _random_genotype("dast_2d")
    g.provenance["search_config"] = DASTSearchConfig(token_grid=4, num_heads=4).to_dict()
    kwargs = get_method("dast").fixed_network_kwargs(g, 0.3, planned=PlannedNetwork("x", patch_size=(40, 24)))
    assert kwargs["patch_size"] == [40, 24] and kwargs["op_options"] == {"token_grid": 4, "num_heads": 4}
    net = DiNTSNet(1, 2, **json.loads(json.dumps(kwargs)))
    assert all(c % 4 == 0 for c in net.space.channels)  # int(64 * 0.3) = 19 -> 16, 38 -> 36
    assert net.space.channels == [16, 36]
    cells = [m for m in net.modules() if type(m).__name__ == "TransformerOp"]
    assert cells and all(op.token_grid == (4, 4) for op in cells)
    with pytest.raises(ValueError, match="needs the configuration's patch size"):
        get_method("dast").fixed_network_kwargs(g, 0.3)


def test_default_token_grid_fits_every_level_and_an_explicit_one_too_large_is_one_clear_error():
    net = DiNTSNet(1, 2, None, num_blocks=1, num_depths=3, spatial_dims=2, channel_mul=0.25, op_set="dast_2d",
                   patch_size=[40, 24], channel_multiple=8)
    grids = {name.split(".")[2]: m.token_grid for name, m in net.named_modules() if type(m).__name__ == "TransformerOp"}
    assert grids["b0_e0"] == (8, 8) and grids["b0_e6"] == (5, 3)  # level 0: 20x12, level 2: 5x3
    with pytest.raises(ValueError, match=r"level 1 \(32 channels, feature map 10x6\): the token grid 8x8 is larger"):
        DiNTSNet(1, 2, None, num_blocks=1, num_depths=3, spatial_dims=2, channel_mul=0.25, op_set="dast_2d",
                 patch_size=[40, 24], op_options={"token_grid": 8})
    with pytest.raises(ValueError, match="not divisible by 8 attention heads"):
        DiNTSNet(1, 2, None, num_blocks=1, num_depths=2, spatial_dims=2, channel_mul=0.3, op_set="dast_2d",
                 patch_size=[16, 16])
    with pytest.raises(ValueError, match="give patch_size"):
        DiNTSNet(1, 2, None, num_blocks=1, num_depths=2, spatial_dims=2, op_set="dast_2d")


def test_genotype_naming_the_transformer_for_a_space_without_it_is_one_clear_error():
    d = _random_genotype("dast_3d", seed=3).to_dict()
    assert "transformer" in sum(d["ops"], [])
    d["op_set"] = "dints_3d"
    with pytest.raises(GenotypeError, match=r"op 'transformer' is not in op set dints_3d.*It is an op of "
                                            r"\['dast_3d', 'dast_3d_p3d'\]"):
        GridGenotype.from_dict(d)


def test_config_refuses_nonsense_and_names_the_transformers_options():
    with pytest.raises(ValueError, match="token_grid=0 must be an integer >= 1"):
        DASTSearchConfig(token_grid=0).validate()
    cfg = DASTSearchConfig.from_dict(DASTSearchConfig(token_grid=6, factorised_ops=True).to_dict())
    assert cfg.token_grid == 6 and cfg.factorised_ops and cfg.op_options() == {"token_grid": 6, "num_heads": 8}


def test_width_counter_counts_a_transformer_by_its_projection_and_attention_outputs():
    """The export's width fit counts linear outputs like conv outputs: 2 1x1 convs + 20 linear layers, each
    C x tokens elements."""
    from nnunet_nas.nnunet.width import conv_output_elements
    from nnunet_nas.ops.transformer import TransformerOp
    assert conv_output_elements(lambda: TransformerOp(16, 16, 2, token_grid=(4, 4)), 16, [8, 8]) == 22 * 16 * 16


def test_upper_memory_penalty_costs_only_memory_above_the_budget():
    """DAST's default holds memory under sigma (a cap); Eq. 10's two-sided term, the literal reading, also pushes
    memory below sigma up, towards the costliest op."""
    model = GridMemoryModel(1, 2, [16, 32], 2, "dast_2d", patch_size=[32, 32])
    marginals = torch.full((1, 4), 0.5, dtype=torch.float64, requires_grad=True)
    probs = torch.full((1, 4, 3), 1 / 3, dtype=torch.float64)
    ratio = float(model.ratio(marginals, probs, "max_discrete"))
    for sigma in (ratio - 0.1, ratio + 0.1):
        upper = model.memory_loss(marginals, probs, sigma, "max_discrete", "upper")
        two_sided = model.memory_loss(marginals, probs, sigma, "max_discrete")
        assert float(two_sided) == pytest.approx(0.1)
        assert float(upper) == pytest.approx(max(0.0, ratio - sigma))
    assert DASTSearchConfig().memory_penalty == "upper" and get_method("dints").config_class().memory_penalty == \
        "two_sided"
    with pytest.raises(ValueError, match="memory penalty 'cap' is not one of"):
        model.memory_loss(marginals, probs, 0.5, "max_discrete", "cap")


def test_attention_maps_cover_the_patch_and_the_window_holds_it():
    from nnunet_nas.nnunet.attention_export import _window, attention_maps
    g = _random_genotype("dast_2d", seed=4)
    g.ops = [["transformer" if on else None for on in row] for row in g.arch_code_a]
    net = DiNTSNet(1, 2, **get_method("dast").fixed_network_kwargs(g, 0.25, planned=PlannedNetwork("x",
                                                                                                 patch_size=(24, 16))))
    maps = attention_maps(net.eval(), torch.randn(1, 1, 24, 16))
    assert len(maps) == int(g.arch_code_a.sum())
    for m in maps.values():
        assert list(m.shape) == [24, 16] and float(m.min()) >= 0 and torch.isfinite(m).all()
    # an image smaller than the patch is padded around it; a larger one gets a centred window inside it
    assert _window([20, 30], [24, 16], None) == ([(2, 2), (0, 0)], [0, 7])
    assert _window([40, 30], [24, 16], [39, 0]) == ([(0, 0), (0, 0)], [16, 0])
