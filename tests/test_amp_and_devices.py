"""What the GPU path needs that the CPU can show: the search spaces under autocast, the dtype interpolation keeps,
and a resume that sees fewer CUDA devices than the run that saved its random streams (issue "Searches that fit
the GPU they run on", its defects)."""

import pytest
import torch

from helpers import TINY_CONFIGS, tiny_planned
from nnunet_nas.nnunet.search_network import SearchNetwork
from nnunet_nas.registry import get_method


@pytest.mark.parametrize("name", ["dints", "dast", "scnas"])
def test_search_spaces_train_under_cpu_autocast(name):
    """The grid's lean CPU kernel computes in its inputs' dtype, which autocast does not change: under autocast the
    space takes the checkpointed path instead (it failed with a dtype mismatch in the backward before)."""
    method, cfg = get_method(name), TINY_CONFIGS[name]
    patch = [16, 16, 16]
    op_set = method.op_set_for(cfg, 3)
    torch.manual_seed(0)
    sup = method.build_supernet(cfg, op_set, 1, 2, 3, True, planned=tiny_planned(3, patch))
    net = SearchNetwork(sup, method.build_arch_params(cfg, sup, op_set), method.make_weighting(cfg))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = net(torch.randn(1, 1, *patch))
        loss = sum(o.float().mean() for o in outs)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)


def test_interpolation_keeps_the_input_dtype():
    from nnunet_nas.ops.conv import resample, upsample
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.bfloat16)
    assert upsample(x, (1, 2, 2), "trilinear").dtype == torch.bfloat16
    assert upsample(x, (1, 2, 2), "trilinear").shape[2:] == (4, 8, 8)
    assert resample(x.float(), "trilinear", size=(2, 2, 2), align_corners=False).dtype == torch.float32


def test_resume_restores_the_random_streams_of_the_cuda_devices_it_sees(monkeypatch):
    """A checkpoint saved with the CUDA states of 4 devices resumes where 1 is visible (a DDP rank, a smaller
    machine): the visible device gets its state, and nothing fails."""
    from nnunet_nas.nnunet import rng
    state = rng.get_rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8) + i for i in range(4)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.__setitem__(device, int(s[0])))
    rng.set_rng_state(state)
    assert restored == {0: 0}
