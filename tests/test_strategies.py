"""The strategy hooks and the pieces every method can use: temperature annealing, per-forward sampling identical
across ranks, operation pruning (masks, module removal, optimiser state), config and data split."""

import pytest
import torch
from torch import nn

from nnunet_nas.arch.params import ArchParams
from nnunet_nas.arch.weighting import GumbelSoftmaxWeighting, SoftmaxWeighting
from nnunet_nas.config import DiNTSSearchConfig, SearchConfig
from nnunet_nas.nnunet.data import split_weight_arch
from nnunet_nas.nnunet.search_network import SearchNetwork
from nnunet_nas.ops.catalog import op_specs
from nnunet_nas.spaces.mixed_op import MixedOp
from nnunet_nas.strategies.base import SearchProgress
from nnunet_nas.strategies.pruning import prune_search_network, rebuild_optimizer
from nnunet_nas.strategies.temperature import TemperatureAnnealing


class _EdgeArch(ArchParams):
    def __init__(self, num_edges, num_ops):
        super().__init__()
        self.op_logits = nn.Parameter(torch.randn(num_edges, num_ops) * 0.1)


class _TwoEdgeSupernet(nn.Module):
    """x -> edge 0 (stride 2) -> edge 1: the smallest space with removable ops."""

    def __init__(self, specs, dims=2, channels=4):
        super().__init__()
        self.edges = nn.ModuleList([MixedOp(specs, 1, channels, dims, stride=2), MixedOp(specs, channels, 2, dims)])

    def forward(self, x, weights):
        for edge, w in zip(self.edges, weights):
            x = edge(x, w)
        return x

    def remove_ops(self, alive):
        return sum(edge.remove_ops(a.tolist()) for edge, a in zip(self.edges, alive))


def _progress(epoch=0, step=0, num_epochs=10, warmup=2, total=80):
    return SearchProgress(epoch, num_epochs, warmup, step, total)


def test_temperature_schedules_on_hand_computed_points():
    lin = TemperatureAnnealing(10.0, 0.1, "linear", per="step")
    assert lin.temperature(_progress(step=0)) == 10.0
    assert lin.temperature(_progress(step=40)) == pytest.approx(5.05)
    assert lin.temperature(_progress(step=80)) == pytest.approx(0.1)
    exp = TemperatureAnnealing(10.0, 0.1, "exponential", per="epoch")
    assert exp.temperature(_progress(epoch=1, num_epochs=11)) == 10.0  # warm-up
    # architecture epochs 2..10: epoch 6 is halfway, sqrt(10 * 0.1); the last one reaches the end temperature
    assert exp.temperature(_progress(epoch=6, num_epochs=11)) == pytest.approx(1.0)
    assert exp.temperature(_progress(epoch=10, num_epochs=11)) == pytest.approx(0.1)
    net = SearchNetwork(nn.Identity(), _EdgeArch(1, 3), GumbelSoftmaxWeighting())
    exp.before_step(net, _progress(epoch=6, num_epochs=11))
    assert net.weighting.temperature == pytest.approx(1.0) and exp.history() == {"arch_temperature": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="schedule"):
        TemperatureAnnealing(schedule="cosine")


def test_gumbel_sampling_is_identical_on_every_rank_and_resumes():
    arch = _EdgeArch(5, 4)
    ranks = [GumbelSoftmaxWeighting(2.0) for _ in range(2)]
    for w in ranks:
        w.seed(7)
    a, b = ranks[0](arch), ranks[1](arch)
    assert torch.equal(a, b) and torch.allclose(a.sum(-1), torch.ones(5))
    state = ranks[0].state_dict()
    nxt = ranks[0](arch)
    assert not torch.equal(nxt, a)  # fresh noise per forward
    resumed = GumbelSoftmaxWeighting(5.0)
    resumed.load_state_dict(state)
    assert resumed.temperature == 2.0 and torch.equal(resumed(arch), nxt)
    a.sum().backward()  # differentiable in alpha
    assert arch.op_logits.grad is not None


def test_pruning_masks_removes_modules_and_keeps_optimiser_state():
    torch.manual_seed(0)
    specs = op_specs("darts_2d")
    net = SearchNetwork(_TwoEdgeSupernet(specs), _EdgeArch(2, len(specs)), SoftmaxWeighting())
    x = torch.randn(2, 1, 8, 8)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=0.01)
    net(x).square().mean().backward()
    w_opt.step()
    a_opt.step()
    alive = torch.ones(2, len(specs), dtype=torch.bool)
    alive[:, 4] = False  # sep_conv_3 everywhere
    alive[1, :4] = False  # edge 1 keeps only sep_conv_5, dil_conv_3, dil_conv_5
    survivor = net.supernet.edges[1].ops["dil_conv_3"].conv.weight
    momentum = w_opt.state[survivor]["momentum_buffer"].clone()
    removed = prune_search_network(net, alive)
    assert removed == 1 + 5  # one module with parameters or not: every dead op is gone
    assert "sep_conv_3" not in net.supernet.edges[0].ops and list(net.supernet.edges[1].ops) == \
        ["sep_conv_5", "dil_conv_3", "dil_conv_5"]
    probs = net.arch.op_probs()
    assert torch.all(probs[~alive] == 0) and torch.allclose(probs.sum(-1), torch.ones(2))
    w_opt = rebuild_optimizer(w_opt, net.weight_parameters())
    a_opt = rebuild_optimizer(a_opt, net.arch_parameters())
    assert torch.equal(w_opt.state[survivor]["momentum_buffer"], momentum)
    assert len(w_opt.param_groups[0]["params"]) == len(list(net.weight_parameters()))
    assert w_opt.param_groups[0]["momentum"] == 0.9 and "step" in a_opt.state[net.arch.op_logits]
    out = net(x)  # still runs, and pruned ops never come back
    assert out.shape == (2, 2, 4, 4)
    with pytest.raises(ValueError, match="without any operation"):
        net.arch.set_alive_ops(torch.zeros(2, len(specs), dtype=torch.bool))
    # a fresh network loads the pruned state (the mask buffer is created on load)
    fresh = _EdgeArch(2, len(specs))
    fresh.load_state_dict(net.arch.state_dict())
    assert torch.equal(fresh.alive_ops, net.arch.alive_ops)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_every_darts_op_maps_shapes_with_stride_and_gets_gradients(dims, stride):
    specs = op_specs(f"darts_{dims}d")
    edge = MixedOp(specs, 4, 6, dims, stride=stride)
    x = torch.randn(2, 4, *([8] * dims), requires_grad=True)
    w = torch.softmax(torch.randn(len(specs)), 0)
    for n, name in enumerate(edge.op_names):
        y = edge.ops[name](x)
        assert y.shape == (2, 6) + (8 // stride,) * dims, name
    edge(x, w).square().mean().backward()
    assert all(p.grad is not None for p in edge.parameters())
    assert edge(x, w, active=[0, 3]).shape == (2, 6) + (8 // stride,) * dims  # only the sampled ops run


def test_op_memory_is_a_function_of_the_shape():
    conv = op_specs("dints_3d")[1]
    assert conv.linear and conv.memory_elements((8, 4, 4, 4)) == 3.0 * 8 * 64
    from nnunet_nas.ops.catalog import OpSpec
    attention = OpSpec("attn", lambda *a, **k: nn.Identity(), 0.0, memory_fn=lambda s: s[0] * 2 + (s[1] * s[2]) ** 2)
    assert not attention.linear and attention.memory_elements((4, 3, 3)) == 8 + 81


def test_search_configs_share_a_base_and_validate():
    cfg = SearchConfig(warmup_epochs=3)
    assert cfg.num_warmup_epochs(100) == 3 and SearchConfig().num_warmup_epochs(10) == 5
    assert DiNTSSearchConfig().num_warmup_epochs(80) == 40 and DiNTSSearchConfig().weight_optimizer == "sgd"
    with pytest.raises(ValueError, match="weight_optimizer"):
        SearchConfig(weight_optimizer="rmsprop").validate()
    with pytest.raises(ValueError, match="data_split"):
        SearchConfig(data_split=(4, 0)).validate()


def test_four_to_one_split():
    keys = [f"c{i:02d}" for i in range(10)]
    w, a = split_weight_arch(keys, (4, 1))
    assert (len(w), len(a)) == (8, 2) and set(w).isdisjoint(a) and sorted(w + a) == keys
    assert split_weight_arch(keys, (1, 1)) == split_weight_arch(keys)
