"""Memory model of the DiNTS grid (paper Eq. 8-10) against MONAI and hand-computed values."""

import contextlib
import io

import numpy as np
import pytest
import torch

from helpers import CVPR_JSON
from nnunet_nas.arch.memory import GridMemoryModel, estimate_training_memory_bytes, network_feature_map_size
from nnunet_nas.genotypes.grid import GridGenotype

try:
    from nnunet_nas.arch.grid_probs import edge_marginals
except ImportError:  # written concurrently; the inline version is the same formula (MONAI's arch_code_prob_a)
    def edge_marginals(a):
        p = torch.sigmoid(a)
        return p / (1 - torch.prod(1 - p, dim=-1, keepdim=True))


def _rand_logits(L, E, N, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, E, generator=g, dtype=torch.float64) * 1.5, \
        torch.randn(L, E, N, generator=g, dtype=torch.float64) * 1.5


@pytest.mark.monai
def test_matches_monai_expected_memory_times_two():
    nets = pytest.importorskip("monai.networks.nets")
    with contextlib.redirect_stdout(io.StringIO()):  # MONAI prints a patch-size hint
        space = nets.TopologySearch(channel_mul=0.5, num_blocks=3, num_depths=3, use_downsample=True)
    a, c = _rand_logits(3, 7, 5, seed=0)
    space.log_alpha_a.data.copy_(a.float())
    space.log_alpha_c.data.copy_(c.float())
    B, patch = 2, [64, 48, 32]
    monai_mb = space.get_ram_cost_usage(in_size=[B, 1] + patch, full=False)
    monai_elements = monai_mb * 1024 ** 2 / 4  # MONAI: elements * 32 bits / 8 / 1024**2
    monai_elements.backward()
    monai_elements = float(monai_elements.detach())

    model = GridMemoryModel(3, 3, space.filter_nums[1:], 3, "dints_3d")
    a_ours = space.log_alpha_a.detach().double().requires_grad_()
    c_ours = space.log_alpha_c.detach().double().requires_grad_()
    ours = model.expected(edge_marginals(a_ours), torch.softmax(c_ours, -1), patch, B)
    ours.backward()
    # MONAI's node size is B * f[r] * prod(patch / 2^r) / 2; the real level-r node has f[r+1] = 2 f[r] channels
    # at patch / 2^(r+1), i.e. B * f[r] * prod(patch / 2^r) / 4 elements in 3-D: MONAI counts every node (and
    # hence M_e) exactly twice (MONAI_DINTS_NOTES q2). Its per-edge costs (op + preprocess) and its marginals
    # are ours, so the relation holds for the value and for the gradients.
    assert monai_elements == pytest.approx(2 * float(ours.detach()), rel=1e-5)
    torch.testing.assert_close(space.log_alpha_a.grad.double(), 2 * a_ours.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(space.log_alpha_c.grad.double(), 2 * c_ours.grad, rtol=1e-4, atol=1e-3)
    # MONAI's full=True keeps softmax(alpha) (q1): it equals our M_e with every edge on, not our constant M_a
    monai_full = space.get_ram_cost_usage(in_size=[B, 1] + patch, full=True).detach() * 1024 ** 2 / 4
    ones = torch.ones(3, 7, dtype=torch.float64)
    assert float(monai_full) == pytest.approx(2 * float(model.expected(ones, torch.softmax(c, -1), patch, B)),
                                              rel=1e-5)
    assert 2 * model.full(patch, B) > 3 * float(monai_full)


def _tiny():
    # D=2: e0 0->0 (same), e1 1->0 (up), e2 0->1 (down), e3 1->1 (same); channels [4, 8]
    return GridMemoryModel(1, 2, [4, 8], 3, "dints_3d")


def test_hand_computed_tiny_grid():
    model = _tiny()
    patch, B = [8, 8, 8], 2
    # sizes: level 0 = 2 * 4 * 4^3 = 512, level 1 = 2 * 8 * 2^3 = 128
    # pre: e0 0, e1 up 2 + 2*(8/4) = 6, e2 down 3 + (4/8)*2^3 = 7, e3 0; ops [skip 0, conv 3, p3d 4, 4, 4]
    torch.testing.assert_close(model.pre_cost, torch.tensor([0.0, 6.0, 7.0, 0.0], dtype=torch.float64))
    marg = torch.tensor([[0.5, 0.25, 1.0, 0.0]], dtype=torch.float64)
    probs = torch.tensor([[[0, 1, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0.2] * 5, [0, 0, 0, 0, 1]]], dtype=torch.float64)
    # 0.5*512*(1+0+3) + 0.25*512*(1+6+1.5) + 1*128*(1+7+3) + 0 = 1024 + 1088 + 1408
    assert float(model.expected(marg, probs, patch, B)) == pytest.approx(3520.0)
    # M_a: 512*(1+0+15) + 512*(1+5*6+15) + 128*(1+5*7+15) + 128*(1+0+15)
    assert model.full(patch, B) == pytest.approx(8192 + 23552 + 6528 + 2048)
    # max: 512*(1+4) + 512*(1+6+4) + 128*(1+7+4) + 128*(1+4) = 10368
    assert model.max_ratio() == pytest.approx(10368 / 40320) and model.max_ratio("max_discrete") == 1.0
    assert float(model.memory_loss(marg, probs, 0.5)) == pytest.approx(abs(3520 / 40320 - 0.5))
    ops = [["conv_3x3x3", None, None, "skip"]]
    g = GridGenotype("dints_3d", np.array([[1, 1], [1, 1]]), np.array([[1, 0, 0, 1]]), ops)
    g.validate()
    assert model.genotype_elements(g, patch, B) == pytest.approx(512 * (1 + 3) + 128 * (1 + 0))


def test_full_is_a_constant_of_the_space():
    model = GridMemoryModel(2, 4, [16, 32, 64, 128], 3, "dints_3d")
    patch = [32, 32, 32]
    full = model.full(patch, 2)
    assert isinstance(full, float)
    ones = torch.ones(2, 10, 5, dtype=torch.float64)
    assert float(model.expected(ones[..., 0], ones, patch, 2)) == pytest.approx(full)
    for seed in range(3):
        a, c = _rand_logits(2, 10, 5, seed)
        a.requires_grad_()
        c.requires_grad_()
        loss = model.memory_loss(edge_marginals(a), torch.softmax(c, -1), 0.05)
        ga, gc = torch.autograd.grad(loss, (a, c))
        # only M_e carries gradient: d|M_e/M_a - s| = sign * dM_e / M_a with M_a fixed
        m_e = model.expected(edge_marginals(a), torch.softmax(c, -1), patch, 2)
        ea, ec = torch.autograd.grad(m_e, (a, c))
        sign = float(torch.sign(m_e.detach() / full - 0.05))
        torch.testing.assert_close(ga, sign * ea / full)
        torch.testing.assert_close(gc, sign * ec / full)
        assert model.full(patch, 2) == full
    assert model.max_ratio() == pytest.approx(0.254328832406672)  # D=4, 3-D paper op set


def test_monotone_in_edges_and_op_cost():
    model = GridMemoryModel(2, 4, [16, 32, 64, 128], 3, "dints_3d")
    patch = [16, 16, 16]
    gen = torch.Generator().manual_seed(1)
    order = torch.argsort(model.op_cost[0])  # cheapest first (the same on every edge: linear ops)
    for _ in range(20):
        marg = torch.rand(2, 10, generator=gen, dtype=torch.float64)
        probs = torch.softmax(torch.randn(2, 10, 5, generator=gen, dtype=torch.float64), -1)
        base = float(model.expected(marg, probs, patch, 1))
        b, e = torch.randint(0, 2, (1,), generator=gen).item(), torch.randint(0, 10, (1,), generator=gen).item()
        on = marg.clone()
        on[b, e] = 1.0
        assert float(model.expected(on, probs, patch, 1)) >= base
        off = marg.clone()
        off[b, e] = 0.0
        assert float(model.expected(off, probs, patch, 1)) <= base
        i, j = sorted(torch.randint(0, 5, (2,), generator=gen).tolist())
        lo, hi = order[i], order[j]  # cost[lo] <= cost[hi]
        moved = probs.clone()
        t = moved[b, e, lo] * 0.5
        moved[b, e, lo] -= t
        moved[b, e, hi] += t
        assert float(model.expected(marg, moved, patch, 1)) >= base - 1e-9


def test_memory_loss_gradient_reaches_both_logit_tensors():
    model = GridMemoryModel(3, 4, [16, 32, 64, 128], 3, "dints_3d")
    a = (torch.randn(3, 10) * 0.01).requires_grad_()
    c = (1 + torch.randn(3, 10, 5) * 0.01).requires_grad_()
    loss = model.memory_loss(edge_marginals(a), torch.softmax(c, -1), sigma=0.1)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert (a.grad.abs().sum(-1) > 0).all() and (c.grad.abs().sum((-1, -2)) > 0).all()


def test_network_estimates():
    from nnunet_nas.networks.dints_net import DiNTSNet

    ops = [["conv_3x3x3", None, None, "skip"]] * 2
    g = GridGenotype("dints_3d", np.ones((3, 2), dtype=np.int64), np.array([[1, 0, 0, 1]] * 2), ops)
    fixed = DiNTSNet(1, 3, genotype=g, channel_mul=0.25)
    supernet = DiNTSNet(1, 3, num_blocks=2, num_depths=2, channel_mul=0.25)
    patch = [16, 16, 16]
    n_fixed, n_super = fixed.compute_conv_feature_map_size(patch), network_feature_map_size(supernet, patch)
    assert isinstance(n_fixed, int) and n_fixed == network_feature_map_size(fixed, patch)
    grid_fixed = GridMemoryModel.from_network(fixed).genotype_elements(g, patch, 1, saved=True)
    grid_super = GridMemoryModel.from_network(supernet).full(patch, 1)
    assert n_super - n_fixed == pytest.approx(grid_super - grid_fixed, abs=2)  # same stems and tail
    params = sum(p.numel() for p in fixed.parameters())
    assert estimate_training_memory_bytes(fixed, patch, 2, amp=True) == 2 * n_fixed * 2 + 16 * params
    assert estimate_training_memory_bytes(fixed, patch, 2, amp=False) == 2 * n_fixed * 4 + 16 * params


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_network_estimate_matches_what_autograd_keeps(seed):
    """The estimate printed at export (activations) against the tensors autograd really saves for a training step
    of the fixed network (CPU, fp32): within MEASURED_TOLERANCE (it was 1.7x pessimistic with the paper's table)."""
    from nnunet_nas.arch.memory import MEASURED_TOLERANCE, saved_activation_elements
    from nnunet_nas.discretize.grid_path import decode_grid_codes
    from nnunet_nas.genotypes.monai_compat import from_monai_codes
    from nnunet_nas.networks.dints_net import DiNTSNet
    rng = np.random.RandomState(seed)
    L, D = 4, 3
    g = from_monai_codes(*decode_grid_codes(rng.normal(0, 2, (L, 3 * D - 2)), rng.normal(0, 2, (L, 3 * D - 2, 5))))
    from nnunet_nas.methods.dints import fixed_network_kwargs
    net = DiNTSNet(1, 3, deep_supervision=True, **fixed_network_kwargs(g, 0.25))
    patch = [32, 32, 32]
    measured = saved_activation_elements(net, torch.randn(2, 1, *patch))
    estimate = 2 * net.compute_conv_feature_map_size(patch)
    assert abs(estimate / measured - 1) <= MEASURED_TOLERANCE, (estimate, measured)


def test_published_architecture_estimate_matches_what_autograd_keeps():
    from nnunet_nas.arch.memory import MEASURED_TOLERANCE, saved_activation_elements
    from nnunet_nas.genotypes.monai_compat import load_monai_file
    from nnunet_nas.methods.dints import fixed_network_kwargs
    from nnunet_nas.networks.dints_net import DiNTSNet
    g = load_monai_file(CVPR_JSON)
    net = DiNTSNet(1, 2, deep_supervision=True, **fixed_network_kwargs(g, 0.125))
    measured = saved_activation_elements(net, torch.randn(1, 1, 64, 64, 64))
    assert abs(net.compute_conv_feature_map_size([64] * 3) / measured - 1) <= MEASURED_TOLERANCE


def test_budget_is_a_share_of_the_largest_discrete_architecture():
    """With the default reference every sigma in (0, 1] is attainable: the largest discrete architecture has ratio
    1, and at the start of a search (ratio about 0.44) sigma 0.2 and 0.8 pull in opposite directions; with the
    paper's M_a (start 0.11, attainable max 0.254) their gradients are bitwise equal."""
    from nnunet_nas.arch.grid_probs import edge_marginals
    model = GridMemoryModel(12, 4, [16, 32, 64, 128], 3)
    ones = torch.ones(12, 10)
    costliest = torch.nn.functional.one_hot(torch.tensor(2), 5).double().expand(12, 10, 5)  # a P3D op
    assert float(model.ratio(ones.double(), costliest, "max_discrete")) == pytest.approx(1.0)
    torch.manual_seed(0)
    a = (torch.randn(12, 10) * 0.01).requires_grad_()
    c = (1 + torch.randn(12, 10, 5) * 0.01).requires_grad_()

    def grad(sigma, reference):
        a.grad = c.grad = None
        model.memory_loss(edge_marginals(a), torch.softmax(c, -1), sigma, reference).backward()
        return a.grad.clone()
    start = float(model.ratio(edge_marginals(a), torch.softmax(c, -1), "max_discrete"))
    assert 0.3 < start < 0.6
    assert torch.equal(grad(0.2, "paper"), grad(0.8, "paper"))
    assert torch.equal(grad(0.2, "max_discrete"), -grad(0.8, "max_discrete"))
    with pytest.raises(ValueError, match="memory reference"):
        model.ratio(edge_marginals(a), torch.softmax(c, -1), "monai")


@pytest.mark.parametrize("method_name, dims, patch, strides", [
    ("dints", 2, (56, 40), None),
    ("dints", 3, (40, 56, 40), [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),  # an anisotropic plan
    ("dast", 2, (56, 40), None),  # transformer ops: counted by their linear outputs, as the export does
])
def test_the_search_counts_a_found_network_as_the_export_does(method_name, dims, patch, strides):
    """memory_reference="nnunet": the search's table, built from one counted pass over the supernet at the export
    width, gives every discrete architecture the export counter's figure for the exported network (within its one
    deep-supervision head per level the found network lacks); between discrete points it is smooth in alpha."""
    from nnunet_nas.networks.common import conv_output_elements
    from nnunet_nas.networks.dints_net import DiNTSNet
    from nnunet_nas.nnunet.export import sampled_genotype
    from nnunet_nas.planned_network import PlannedNetwork
    from nnunet_nas.registry import get_method
    method = get_method(method_name)
    extra = {"num_heads": 2} if method_name == "dast" else {}
    cfg = method.config_class(num_blocks=3, num_depths=3, channel_mul=0.125, **extra)
    kwargs = {} if strides is None else {"strides": strides, "kernel_sizes": [[3] * dims] * len(strides)}
    planned = PlannedNetwork("dynamic_network_architectures.architectures.unet.PlainConvUNet", kwargs, (), None, patch)
    op_set = method.op_set_for(cfg, dims)
    width = cfg.counted_export_width()
    assert width == 0.25  # twice the search width [DiNTS paper 4.1]
    counted = method.count_export_memory(
        cfg, lambda c: method.build_supernet(c, op_set, 1, 3, dims, True, planned=planned), 1, patch, lambda: 1.0)
    for seed in range(3):
        genotype = sampled_genotype(method, cfg, planned, dims, 1, 3, seed)
        genotype.provenance = {"search_config": cfg.to_dict()}  # DAST's export reads its heads there
        fixed = method.fixed_network_kwargs(genotype, width, planned=planned)
        exact = conv_output_elements(lambda: DiNTSNet(1, 3, deep_supervision=True, **fixed), 1, patch)
        assert counted.genotype_ratio(genotype) == pytest.approx(exact, rel=3e-3)
        assert counted.min_ratio() <= counted.genotype_ratio(genotype)
    a, c = _rand_logits(3, counted.pre.shape[1], counted.op.shape[-1], seed=1)
    a.requires_grad_(True)
    c.requires_grad_(True)
    counted.ratio(edge_marginals(a), torch.softmax(c, -1)).backward()
    assert a.grad.abs().sum() > 0 and c.grad.abs().sum() > 0
    assert counted.max_ratio() > float(counted.ratio(edge_marginals(a), torch.softmax(c, -1)).detach())


@pytest.mark.parametrize("dims, patch", [(2, (56, 40)), (3, (40, 56, 40))])
def test_scnas_counts_a_found_network_as_the_export_does(dims, patch):
    """SCNAS's optional memory term: every edge keeps its most probable op, so the count is linear in the ops' one-hot
    choice and equals the export's counter on the exported network exactly; softmax(alpha) weights it in the search,
    and the term steers alpha."""
    from nnunet_nas.networks.common import conv_output_elements
    from nnunet_nas.networks.scnas_net import CELL_TYPES, SCNASNet
    from nnunet_nas.nnunet.export import sampled_genotype
    from nnunet_nas.nnunet.search_network import SearchNetwork
    from nnunet_nas.ops.catalog import op_names
    from nnunet_nas.planned_network import PlannedNetwork
    from nnunet_nas.registry import get_method
    method = get_method("scnas")
    cfg = method.config_class(channel_mul=0.25, num_nodes=2, memory_budget=0.5)
    planned = PlannedNetwork("none", {}, (), None, patch)
    op_set = method.op_set_for(cfg, dims)
    assert cfg.counted_export_width() == pytest.approx(0.25 * 68 / 48)  # the paper's 68-channel stem from 48
    counted = method.count_export_memory(
        cfg, lambda c: method.build_supernet(c, op_set, 1, 3, dims, True, planned=planned), 1, patch, lambda: 1e6)
    for seed in range(2):
        genotype = sampled_genotype(method, cfg, planned, dims, 1, 3, seed)
        kwargs = method.fixed_network_kwargs(genotype, cfg.counted_export_width(), planned=planned)
        exact = conv_output_elements(lambda: SCNASNet(1, 3, deep_supervision=True, **kwargs), 1, patch)
        assert counted.genotype_ratio(genotype, CELL_TYPES, op_names(op_set)) * 1e6 == pytest.approx(exact, rel=1e-9)
        assert counted.min_ratio() <= counted.genotype_ratio(genotype, CELL_TYPES, op_names(op_set))
    supernet = method.build_supernet(cfg, op_set, 1, 3, dims, True, planned=planned)
    arch = method.build_arch_params(cfg, supernet, op_set)
    net = SearchNetwork(supernet, arch, method.make_weighting(cfg))
    net.export_memory = counted
    method.regularizers(net, cfg)["memory"].backward()
    assert arch.op_logits.grad.abs().sum() > 0


def test_the_memory_floor_is_the_least_a_discrete_architecture_counts():
    """min_ratio by enumeration: a cell space's floor is its cheapest architecture (one op per edge); a grid's is
    below every architecture that keeps an edge per block, and equals the cheapest where no stem costs anything."""
    import itertools

    from nnunet_nas.arch.counted_memory import CountedCellMemory, CountedGridMemory
    rng = np.random.default_rng(0)
    cells = CountedCellMemory(7.0, rng.uniform(0, 5, (2, 3, 3)), reference=4.0)
    cheapest = min(float(cells.ratio(torch.nn.functional.one_hot(torch.tensor(c).view(2, 3), 3).double()))
                   for c in itertools.product(range(3), repeat=6))
    assert cells.min_ratio() == pytest.approx(cheapest)
    L, E, N = 2, 3, 2
    for stem in ([0.0, 0.0], [2.0, 5.0]):
        grid = CountedGridMemory(7.0, stem, rng.uniform(0, 3, (L, E)), rng.uniform(0, 5, (L, E, N)), 4.0,
                                 edges_from=[[0, 1], [2]])
        counts = []
        for on in itertools.product((0.0, 1.0), repeat=L * E):
            on = torch.tensor(on, dtype=torch.float64).view(L, E)
            if (on.sum(-1) == 0).any():
                continue
            for ops in itertools.product(range(N), repeat=L * E):
                onehot = torch.nn.functional.one_hot(torch.tensor(ops).view(L, E), N).double()
                counts.append(float(grid.ratio(on, onehot)))
        assert grid.min_ratio() <= min(counts) + 1e-12
        if not any(stem):
            assert grid.min_ratio() == pytest.approx(min(counts))


def test_an_unmet_budget_is_refused_with_a_width_that_builds_or_the_budget_that_width_needs():
    """The refusal's fix, on a hand-computed floor (2.0x nnU-Net's at channel_mul 0.5): a narrower search where one
    builds (0.5 * 0.75 * budget / floor), else the budget the narrowest buildable width needs (linear in the width)."""
    from nnunet_nas.arch.counted_memory import CountedCellMemory, check_budget_reachable
    from nnunet_nas.errors import ConfigError
    from nnunet_nas.methods.scnas import SCNASSearchConfig
    counted = CountedCellMemory(8.0, np.zeros((4, 2, 3)), reference=4.0)
    cfg = SCNASSearchConfig(channel_mul=0.5)
    check_budget_reachable(counted, 2.0, cfg, narrowest=0.0625)
    with pytest.raises(ConfigError, match=r"memory_budget=1 .* 2\.00x .*\(channel_mul=0\.188 leaves"):
        check_budget_reachable(counted, 1.0, cfg, narrowest=0.0625)
    with pytest.raises(ConfigError, match=r"narrowest width the network builds at \(channel_mul=0\.0625\) counts "
                                          r"about 0\.25x"):
        check_budget_reachable(counted, 0.2, cfg, narrowest=0.0625)


@pytest.mark.parametrize("network, heads", [("dints", 1), ("dints", 8), ("scnas", 1)])
def test_the_narrowest_width_a_network_builds_at_is_exact(network, heads):
    """What the refusal names as the narrowest width builds, and 1 % below it does not."""
    from nnunet_nas.errors import ConfigError
    from nnunet_nas.networks import dints_net, scnas_net
    if network == "dints":
        narrowest = dints_net.narrowest_channel_mul(channel_multiple=heads)
        build = lambda mul: dints_net.DiNTSNet(1, 3, None, num_blocks=2, num_depths=3, spatial_dims=2,  # noqa: E731
                                               channel_mul=mul, channel_multiple=heads)
    else:
        narrowest = scnas_net.narrowest_channel_mul()
        build = lambda mul: scnas_net.SCNASNet(1, 3, None, 2, mul, num_nodes=2)  # noqa: E731
    with torch.device("meta"):
        build(narrowest)
        with pytest.raises(ConfigError, match="channel_mul"):
            build(narrowest * 0.99)
