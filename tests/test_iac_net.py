"""IAC implanting (networks/iac_net.py): the implanted network starts as its host, for nnU-Net's PlainConvUNet and
ResidualEncoderUNet in 2-D and 3-D, searchable and fixed cells, both input modes; host weights load by name; a
mismatched host is one clear error; training the cells leaves a frozen host bit-identical."""

import numpy as np
import pytest
import torch

from nnunet_nas.genotypes.cell import CellGenotype
from nnunet_nas.networks.iac_net import IACUNet, build_host, iac_cell_types
from nnunet_nas.ops.catalog import op_names
from nnunet_nas.spaces.cell import cell_edges

REQ = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def _host_kwargs(dims, residual):
    conv = f"torch.nn.modules.conv.Conv{dims}d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dims}d"
    kw = {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": conv, "kernel_sizes": [[3] * dims] * 3,
          "strides": [[1] * dims, [2] * dims, [2] * dims], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
          "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
          "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    if residual:
        kw["n_blocks_per_stage"] = [1, 2, 2]
        name = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    else:
        kw["n_conv_per_stage"] = [2, 2, 2]
        name = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    return name, kw


def _random_genotype(dims, types, seed=0):
    names = [n for n in op_names(f"darts_{dims}d") if n != "zero"]
    rng = np.random.RandomState(seed)
    return CellGenotype.from_edge_ops(f"darts_{dims}d", {t: [names[i] for i in rng.randint(0, len(names),
                                                                                          len(cell_edges(4)))]
                                                         for t in types})


CASES = [(2, False), (3, True), (2, True)]


@pytest.mark.parametrize("dims,residual", CASES, ids=[f"{d}d-{'resenc' if r else 'plain'}" for d, r in CASES])
@pytest.mark.parametrize("fixed", [False, True], ids=["search", "fixed"])
def test_implanted_network_starts_as_its_host(dims, residual, fixed):
    torch.manual_seed(0)
    name, kw = _host_kwargs(dims, residual)
    for ds, mode in ((True, "fusion"), (False, "skip_only")):
        host = build_host(name, kw, REQ, 1, 3, ds).eval()
        genotype = _random_genotype(dims, iac_cell_types(2, True, mode)) if fixed else None
        net = IACUNet(1, 3, name, kw, REQ, genotype=genotype, mode=mode, deep_supervision=ds).eval()
        net.load_host_weights(host.state_dict())
        x = torch.randn(2, 1, *([16] * dims))
        weights = None if fixed else torch.softmax(torch.randn(1, len(cell_edges(4)), 8), -1)
        with torch.no_grad():
            expected, got = host(x), net(x, weights)
        if ds:
            assert len(got) == len(expected) == 2
            for a, b in zip(got, expected):
                assert torch.equal(a, b)
        else:
            assert torch.equal(got, expected)


def test_training_the_cells_moves_the_output_and_leaves_a_frozen_host_unchanged():
    torch.manual_seed(1)
    name, kw = _host_kwargs(2, False)
    net = IACUNet(1, 3, name, kw, REQ, shared_cell=False, deep_supervision=True)
    assert net.cell_types == ["fusion_0", "fusion_1"]
    host_before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("encoder.", "decoder."))}
    host_ids = {id(p) for p in net.host_parameters()}
    for p in net.host_parameters():
        p.requires_grad_(False)
    cells = [p for p in net.parameters() if id(p) not in host_ids]
    opt = torch.optim.SGD(cells, lr=0.1)
    x = torch.randn(2, 1, 16, 16)
    w = torch.softmax(torch.randn(2, len(cell_edges(4)), 8), -1)
    with torch.no_grad():
        before = net(x, w)[0].clone()
    for _ in range(2):  # the zero-initialised output moves first, the cells behind it from the second step
        opt.zero_grad()
        sum(o.square().mean() for o in net(x, w)).backward()
        opt.step()
    with torch.no_grad():
        assert not torch.equal(net(x, w)[0], before)
    for k, v in net.state_dict().items():
        if k in host_before:
            assert torch.equal(v, host_before[k]), k
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.cells.named_parameters())


def test_a_host_of_other_plans_and_bad_genotypes_get_one_clear_error():
    name, kw = _host_kwargs(2, False)
    net = IACUNet(1, 3, name, kw, REQ)
    other = build_host(name, dict(kw, features_per_stage=[8, 16, 32]), REQ, 1, 3, True)
    with pytest.raises(ValueError, match="not this network's host"):
        net.load_host_weights(other.state_dict())
    with pytest.raises(ValueError, match="3-D genotype"):
        IACUNet(1, 3, name, kw, REQ, genotype=_random_genotype(3, ["fusion"]))
    with pytest.raises(Exception, match="cell types"):  # one cell per level, for a host of two levels
        IACUNet(1, 3, name, kw, REQ, genotype=_random_genotype(2, ["fusion_0"]))
    with pytest.raises(ValueError, match="not an IAC genotype"):
        IACUNet(1, 3, name, kw, REQ, genotype=_random_genotype(2, ["encoder_normal"]))
    with pytest.raises(ValueError, match="UNetDecoder"):
        build_host("nnunet_nas.networks.scnas_net.SCNASNet", {}, [], 1, 3, True)


def test_conv_feature_maps_count_host_and_cells():
    name, kw = _host_kwargs(2, False)
    host = build_host(name, kw, REQ, 1, 3, True)
    net = IACUNet(1, 3, name, kw, REQ, genotype=_random_genotype(2, ["fusion"]), deep_supervision=True)
    assert net.compute_conv_feature_map_size([16, 16]) > host.compute_conv_feature_map_size([16, 16])


def test_pc_darts_partial_channels_edge_normalisation_and_shuffle_by_hand():
    from nnunet_nas.spaces.cell import Cell, channel_shuffle, node_softmax
    x = torch.arange(4.0).reshape(1, 4, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]
    logits = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])  # node 0: edges 0, 1; node 1: edges 2, 3, 4
    assert torch.allclose(node_softmax(logits, 2), torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]))
    with pytest.raises(ValueError, match="2 nodes"):
        node_softmax(torch.zeros(6), 2)
    torch.manual_seed(0)
    cell = Cell("darts_2d", "normal", [8, 8], 8, num_nodes=2, partial_channels=4)
    assert all(op.ops["sep_conv_3"][0].conv.in_channels == 2 for op in cell.edge_ops)  # the op sees C / K channels
    names = list(op_names("darts_2d"))
    zero = torch.zeros(len(names))
    zero[names.index("zero")] = 1.0
    h = torch.randn(1, 8, 6, 6)
    # an edge whose weight sits on "zero": the op part is zero, the other 3/4 of the channels pass, shuffled
    expected = channel_shuffle(torch.cat((torch.zeros(1, 2, 6, 6), h[:, 2:]), 1), 4)
    assert torch.equal(cell._search_edge(cell.edge_ops[0], h, zero, None), expected)
    w = torch.softmax(torch.randn(5, len(names)), -1)
    s0, s1 = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    plain = cell(s0, s1, w)
    assert torch.allclose(cell(s0, s1, w, edge_weights=torch.ones(5)), plain)
    assert not torch.allclose(cell(s0, s1, w, edge_weights=node_softmax(torch.zeros(5), 2)), plain)
    with pytest.raises(ValueError, match="partial_channels"):
        Cell("darts_2d", "normal", [8, 8], 6, num_nodes=2, partial_channels=4)
    name, kw = _host_kwargs(2, False)
    net = IACUNet(1, 3, name, kw, REQ, partial_channels=2)
    assert [c.partial_channels for c in net.cells] == [2, 2]
    net(torch.randn(1, 1, 16, 16), torch.softmax(torch.randn(1, len(cell_edges(4)), 8), -1)).sum().backward()
