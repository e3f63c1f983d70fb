"""DiNTSNet: parameter counts against MONAI's published figure, deep supervision, fixed vs supernet."""

import numpy as np
import pytest
import torch

from nnunet_nas.arch.params import GridArchParams
from nnunet_nas.arch.weighting import GridEdgeOpWeighting
from nnunet_nas.genotypes.monai_compat import load_monai_file
from nnunet_nas.genotypes.grid import GridGenotype
from nnunet_nas.networks.dints_net import DiNTSNet
from nnunet_nas.nnunet.search_network import SearchNetwork
from nnunet_nas.ops.catalog import op_names
from helpers import CVPR_JSON, CVPR_PTH



def _params(m):
    return sum(p.numel() for p in m.parameters())


UNREAD_STEM = 1 * 256 * 27 + 2 * 256 + 256 * 512 * 27 + 2 * 512  # input level 3's stem, which MONAI builds


def test_published_architecture_has_monais_parameter_count_less_the_unread_stem():
    g = load_monai_file(CVPR_JSON)
    assert int(g.arch_code_a.sum()) == 97 and g.node_a[0].tolist() == [1, 1, 1, 0]
    net = DiNTSNet(1, 2, genotype=g, channel_mul=1.0)
    assert _params(net) + UNREAD_STEM == 152_360_994  # MONAI's count, reference/README.md
    assert _params(net) == 148_813_602 and sorted(net.stem_down) == ["0", "1", "2"]
    # strides alone add nothing (prediction builds without deep supervision); training with deep supervision adds
    # one 1x1 head per extra output: (f[r] + 1) * classes
    strides = [[1, 1, 1]] + [[2, 2, 2]] * 4
    assert _params(DiNTSNet(1, 2, genotype=g, channel_mul=1.0, strides=strides)) == 148_813_602
    with_ds = DiNTSNet(1, 2, genotype=g, channel_mul=1.0, strides=strides, deep_supervision=True)
    assert _params(with_ds) - 148_813_602 == sum((32 * 2 ** r + 1) * 2 for r in (1, 2, 3))
    from nnunet_nas.methods.dints import fixed_network_kwargs  # what add-arch registers (README's figures)
    registered = fixed_network_kwargs(g, 1.0)
    assert _params(DiNTSNet(1, 2, deep_supervision=True, **registered)) == 148_813_602 + 1_928
    # a checkpoint trained with deep supervision loads into the network nnU-Net builds for prediction
    small = dict(genotype=g, channel_mul=0.0625, strides=strides)
    DiNTSNet(1, 2, **small).load_state_dict(DiNTSNet(1, 2, deep_supervision=True, **small).state_dict())


def test_pth_and_json_reference_agree():
    assert load_monai_file(CVPR_JSON).to_dict()["edges"] == load_monai_file(CVPR_PTH).to_dict()["edges"]


@pytest.mark.parametrize("dims", [2, 3])
def test_deep_supervision_outputs_match_nnunet_scales(dims):
    strides = [[1] * dims] + [[2] * dims] * 3
    net = DiNTSNet(1, 3, None, num_blocks=2, num_depths=3, spatial_dims=dims, channel_mul=0.125, strides=strides,
                   deep_supervision=True)
    arch = GridArchParams(2, 3, len(op_names(net.space.op_set_name)))
    x = torch.randn(2, 1, *([24] * dims))  # a multiple of 2^D = 8 (not of 16)
    outs = net(x, GridEdgeOpWeighting()(arch))
    scales = (1 / np.cumprod(np.vstack(strides), axis=0))[:-1]  # what nnU-Net derives from the strides
    assert len(outs) == len(scales)
    for o, s in zip(outs, scales):
        assert list(o.shape[2:]) == [int(24 * f) for f in s] and o.shape[1] == 3
    net.decoder.deep_supervision = False
    assert net(x, GridEdgeOpWeighting()(arch)).shape == (2, 3) + (24,) * dims


def test_every_weight_and_arch_parameter_gets_a_gradient_and_sets_are_disjoint():
    net = DiNTSNet(1, 2, None, num_blocks=2, num_depths=3, channel_mul=0.125, strides=[[1] * 3] + [[2] * 3] * 3,
                   deep_supervision=True)
    model = SearchNetwork(net, GridArchParams(2, 3, 5), GridEdgeOpWeighting())
    outs = model(torch.randn(1, 1, 32, 32, 32))
    sum(o.square().mean() for o in outs).backward()
    weights, arch = set(map(id, model.weight_parameters())), set(map(id, model.arch_parameters()))
    assert weights.isdisjoint(arch) and len(weights) + len(arch) == len(list(model.parameters()))
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def _random_genotype(L, D, seed):
    from nnunet_nas.discretize.grid_path import decode_grid_codes
    from nnunet_nas.genotypes.monai_compat import from_monai_codes
    rng = np.random.RandomState(seed)
    E = 3 * D - 2
    return from_monai_codes(*decode_grid_codes(rng.normal(0, 2, (L, E)), rng.normal(0, 2, (L, E, 5))))


@pytest.mark.parametrize("seed", [0, 1])
def test_supernet_with_one_hot_weights_equals_fixed_network(seed):
    """Where the search ops coincide with the genotype's, the supernet restricted by one-hot weights computes
    exactly the fixed network with the same module weights (shared module names)."""
    torch.manual_seed(seed)
    g = _random_genotype(3, 3, seed)
    sup = DiNTSNet(1, 2, None, num_blocks=3, num_depths=3, channel_mul=0.125).eval()
    fixed = DiNTSNet(1, 2, genotype=g, channel_mul=0.125).eval()
    state = sup.state_dict()
    missing = fixed.load_state_dict({k: v for k, v in state.items() if k in fixed.state_dict()}, strict=False)
    assert not missing.missing_keys and not missing.unexpected_keys
    w = torch.zeros(3, 7, 5)
    for b in range(3):
        for e in range(7):
            if g.arch_code_a[b, e]:
                w[b, e, g.op_indices()[b, e]] = 1.0
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        # unused stems and levels carry zero weight / zero tensors in the supernet (norm biases start at 0)
        torch.testing.assert_close(sup(x, w), fixed(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch,size,frozen_weights", [(2, 16, False), (1, 32, False), (1, 32, True)])
def test_recomputed_norms_give_identical_gradients(batch, size, frozen_weights):
    """The lean search edges (recomputed activations, oneDNN kernels, split weight gradients at batch 1) give the
    gradients of plain autograd, in the weight step and in the architecture step (weights frozen)."""
    torch.manual_seed(0)
    net = DiNTSNet(1, 2, None, num_blocks=2, num_depths=2, channel_mul=0.125)
    arch = GridArchParams(2, 2, 5)
    for p in net.parameters():
        p.requires_grad_(not frozen_weights)
    x = torch.randn(batch, 1, size, size, size, requires_grad=frozen_weights)
    trained = [p for p in list(net.parameters()) + list(arch.parameters()) if p.requires_grad]
    trained += [x] if frozen_weights else []
    grads = []
    for recompute in (True, False):
        net.space.recompute_norms = recompute
        for p in trained:
            p.grad = None
        net(x, GridEdgeOpWeighting()(arch)).square().mean().backward()
        grads.append([p.grad.clone() for p in trained])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("op_set,dims", [("dast_3d", 3), ("dast_2d", 2), ("dast_2d_p2d", 2), ("darts_2d", 2)])
def test_ops_outside_the_lean_path_join_its_sum_with_the_plain_mixed_ops_values_and_gradients(op_set, dims):
    """DAST's transformer (and pools, zero, two-block separable convs) run beside the lean conv edges; the sum, and
    every gradient, equal the plain mixed op's over all ops."""
    torch.manual_seed(0)
    patch = [16] * dims
    net = DiNTSNet(1, 2, None, num_blocks=2, num_depths=2, spatial_dims=dims, channel_mul=0.25, op_set=op_set,
                   patch_size=patch)
    assert net.space.conv_chain_ops and net.space.other_ops
    arch = GridArchParams(2, 2, len(op_names(op_set)))
    x = torch.randn(2, 1, *patch)
    params = list(net.parameters()) + list(arch.parameters())
    results = []
    for lean, recompute in ((True, True), (True, False), (False, False)):
        net.space.conv_chain_ops, net.space.recompute_norms = lean, recompute
        for p in params:
            p.grad = None
        y = net(x, GridEdgeOpWeighting()(arch))
        y.square().mean().backward()
        results.append([y.detach()] + [p.grad.clone() for p in params])
    ref_out, ref_grad = results[2][0], torch.cat([g.flatten() for g in results[2][1:]])
    for other in results[:2]:  # float32 summation order; some gradients (biases before a norm) are zero in theory
        torch.testing.assert_close(other[0], ref_out, rtol=1e-4, atol=1e-5 * float(ref_out.abs().max()))
        grad = torch.cat([g.flatten() for g in other[1:]])
        assert float((grad - ref_grad).norm() / ref_grad.norm()) < 1e-4


def test_incompatible_patch_gives_a_clear_error():
    net = DiNTSNet(1, 2, None, num_blocks=1, num_depths=3, channel_mul=0.125)
    with pytest.raises(ValueError, match=r"divisible by the deepest level.s scale \[8, 8, 8\].*\[40, 40, 40\]"):
        net(torch.randn(1, 1, 36, 36, 36), torch.ones(1, 7, 5))


def test_unsupported_depths_and_blocks_are_refused():
    with pytest.raises(ValueError, match="unsupported number of resolution levels D=6"):
        DiNTSNet(1, 2, None, num_blocks=2, num_depths=6)
    with pytest.raises(ValueError, match="num_blocks"):
        DiNTSNet(1, 2, None, num_blocks=0, num_depths=3)


def test_deep_supervision_request_beyond_the_architecture_is_refused():
    g = load_monai_file(CVPR_JSON)
    with pytest.raises(ValueError, match="deep-supervision outputs"):
        DiNTSNet(1, 2, genotype=g, channel_mul=0.0625, strides=[[1, 1, 1]] + [[2, 2, 2]] * 6)
    # the deepest active level of its last block is 3: outputs at 1/2^0 .. 1/2^4
    net = DiNTSNet(1, 2, genotype=g, channel_mul=0.0625, strides=[[1, 1, 1]] + [[2, 2, 2]] * 5, deep_supervision=True)
    assert [o.shape[-1] for o in net(torch.zeros(1, 1, 32, 32, 32))] == [32, 16, 8, 4, 2]


def test_genotype_dict_round_trips_through_the_network_kwargs():
    g = load_monai_file(CVPR_JSON)
    net = DiNTSNet(1, 2, genotype=g.to_dict(), channel_mul=0.0625)
    assert isinstance(net.genotype, GridGenotype) and net.genotype == g


@pytest.mark.parametrize("dims", [2, 3])
def test_grid_runs_any_op_set_through_the_generic_mixed_op(dims):
    """Ops that are not ReLU -> convs -> norm (pools, zero, separable convs) take the plain mixed-op path; every
    weight and architecture parameter still gets a gradient."""
    net = DiNTSNet(1, 2, None, num_blocks=2, num_depths=2, spatial_dims=dims, channel_mul=0.125,
                   op_set=f"darts_{dims}d")
    names = op_names(f"darts_{dims}d")
    assert [names[n] for n in net.space.other_ops] == ["zero", "max_pool_3", "avg_pool_3", "sep_conv_3", "sep_conv_5"]
    arch = GridArchParams(2, 2, len(op_names(f"darts_{dims}d")))
    net(torch.randn(1, 1, *([16] * dims)), GridEdgeOpWeighting()(arch)).square().mean().backward()
    missing = [n for n, p in list(net.named_parameters()) + list(arch.named_parameters()) if p.grad is None]
    assert missing == []


def _genotype_with_empty_levels(L=3, D=3):
    """A decoded random genotype whose first block leaves an input level unread and whose last block leaves its
    coarsest level empty (the cases where a fixed network could differ from the supernet)."""
    from nnunet_nas.discretize.grid_path import decode_grid_codes
    from nnunet_nas.genotypes.monai_compat import from_monai_codes
    E = 3 * D - 2
    for seed in range(200):
        rng = np.random.RandomState(seed)
        g = from_monai_codes(*decode_grid_codes(rng.normal(0, 2, (L, E)), rng.normal(0, 2, (L, E, 5))))
        if not g.node_a[0].all() and not g.node_a[-1][-1]:
            return g
    raise AssertionError("no such genotype among 200 seeds")


@pytest.mark.parametrize("recompute", [True, False])
def test_supernet_with_one_hot_weights_equals_the_fixed_network(recompute):
    torch.manual_seed(0)
    g = _genotype_with_empty_levels()
    fixed = DiNTSNet(1, 2, genotype=g, channel_mul=0.25)
    supernet = DiNTSNet(1, 2, None, num_blocks=g.num_blocks, num_depths=g.num_depths, channel_mul=0.25,
                        recompute_norms=recompute)
    with torch.no_grad():
        for p in supernet.parameters():
            p.normal_(0, 0.5)  # non-zero norm biases everywhere
    missing, unexpected = fixed.load_state_dict(supernet.state_dict(), strict=False)
    assert missing == []  # every fixed-network parameter has its namesake in the supernet
    w = torch.zeros(g.num_blocks, len(g.ops[0]), 5)
    for b, e in zip(*np.nonzero(g.arch_code_a)):
        w[b, e, g.op_indices()[b, e]] = 1.0
    x = torch.randn(2, 1, 24, 32, 40)  # multiples of 2^D = 8, not all of 16: odd extents at the deepest level
    torch.testing.assert_close(supernet(x, w), fixed(x), rtol=1e-4, atol=1e-5)


def test_fixed_network_uses_every_parameter():
    """nnU-Net wraps the network in DDP without find_unused_parameters: every parameter must get a gradient."""
    g = _genotype_with_empty_levels()
    strides = [[1, 1, 1]] + [[2, 2, 2]] * 3
    net = DiNTSNet(1, 2, genotype=g, channel_mul=0.125, strides=strides, deep_supervision=True)
    sum(o.square().mean() for o in net(torch.randn(1, 1, 32, 32, 32))).backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
