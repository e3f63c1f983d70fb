"""The memory count (fake tensors, the device's code path) and the search's memory fit: the count against what
PyTorch really keeps, CUDA's autocast switched on without a GPU, the fit's order, floor, error and target."""

import pytest
import torch
from torch import nn

from nnunet_nas.errors import ConfigError, EnvironmentSetupError
from nnunet_nas.memory_count import (_SDPA, IterationMemory, _LiveStorages, _to_fake, count_training_step,
                                     deep_supervision_loss, fake_device)
from nnunet_nas.memory_fit import (GIB, MEMORY_ENV, MIN_BATCH, PATCH_FLOOR, WIDTH_SCALES, MemoryTarget, SearchFit,
                                   candidates, fit_search, memory_target)
from nnunet_nas.ops.transformer import MultiHeadAttention


def _plain_net():
    return nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.InstanceNorm3d(8, affine=True), nn.LeakyReLU(inplace=True),
                         nn.Conv3d(8, 8, 3, stride=2, padding=1), nn.InstanceNorm3d(8, affine=True), nn.ReLU(),
                         nn.Upsample(scale_factor=2, mode="trilinear"), nn.Conv3d(8, 3, 1))


def test_the_fake_count_equals_what_the_cpu_really_keeps():
    """The same network, batch and patch, run for real on the CPU and counted on fake CPU tensors: the storages
    alive at the end of the forward pass are the same bytes."""
    torch.manual_seed(0)
    net = _plain_net()
    x, y = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 16, 16, 16))
    params = [p.untyped_storage() for p in net.parameters()]
    with _LiveStorages(params) as live:
        loss = deep_supervision_loss(net(x), y)
        real = live.alive_bytes()
    del loss
    counted = count_training_step(_plain_net(), 2, (16, 16, 16), 1, device_type="cpu", amp=False)
    assert counted.weight_step_activations == real > 0
    n_params = sum(p.numel() for p in net.parameters())
    assert counted.parameters == counted.trained_weights == 4 * n_params


def test_cuda_autocast_is_switched_on_by_hand_without_a_gpu_and_switched_back():
    """fp16 convolutions, float32 trilinear interpolation (CUDA's autocast policy, which ops.conv.resample undoes),
    and autocast off again afterwards: the count sees the CUDA path's dtypes on a machine without CUDA."""
    with fake_device("cuda", amp=True):
        x = torch.empty(1, 2, 8, 8, 8, device="cuda")
        y = nn.Conv3d(2, 4, 3, padding=1, device="cuda")(x)
        z = nn.functional.interpolate(y, scale_factor=2, mode="trilinear")
        assert (y.device.type, y.dtype, z.dtype) == ("cuda", torch.float16, torch.float32)
    assert not torch.is_autocast_enabled("cuda")
    assert nn.functional.scaled_dot_product_attention is _SDPA  # the fused-attention stand-in is gone


def test_the_count_takes_fused_attention_as_cuda_does():
    """No heads x tokens^2 matrix is kept (the math kernel, which fake tensors would take, keeps it in float32)."""
    heads, tokens, dim, batch = 4, 512, 32, 2
    attn = MultiHeadAttention(dim, heads)
    with fake_device("cuda", amp=True):
        _to_fake(attn, torch.device("cuda"))
        x = torch.empty(batch, tokens, dim, device="cuda", requires_grad=True)
        with _LiveStorages([p.untyped_storage() for p in attn.parameters()]) as live:
            out = attn(x, x, x)[0]
            kept = live.alive_bytes()
        del out
    assert kept < batch * heads * tokens * tokens * 2  # less than one fp16 attention matrix


def _linear(persistent: int, per_voxel_item: int):
    """An estimator linear in batch x voxels, as the counts are."""
    calls = []

    def estimate(batch, patch, width=1.0):
        calls.append((batch, list(patch), width))
        voxels = 1
        for p in patch:
            voxels *= p
        return IterationMemory(0, int(per_voxel_item * batch * voxels * width), int(persistent * width ** 2), 0, 1, 0)
    return estimate, calls


def test_the_fit_keeps_a_search_that_fits_and_takes_batch_then_patch_then_batch_one():
    estimate, calls = _linear(0, 1)
    full = estimate(9, (40, 56, 40)).peak
    fit = fit_search(estimate, 9, (40, 56, 40), 8, MemoryTarget(full, "t"))
    assert not fit.changed and fit.estimate_bytes == full
    # a target of 4.5 batch items: batch 4 at the full patch
    fit = fit_search(estimate, 9, (40, 56, 40), 8, MemoryTarget(int(full * 4.5 / 9), "t"))
    assert (fit.batch_size, fit.patch_size) == (4, (40, 56, 40)) and fit.changed
    # below nnU-Net's smallest batch the patch shrinks, aspect kept and divisible by the space's 8
    fit = fit_search(estimate, 9, (40, 56, 40), 8, MemoryTarget(int(full * 1.2 / 9), "t"))
    assert fit.batch_size == MIN_BATCH and all(p % 8 == 0 for p in fit.patch_size)
    assert fit.estimate_bytes <= int(full * 1.2 / 9) and fit.patch_size < (40, 56, 40)
    # below the patch floor at batch 2: batch 1 at the floor
    order = candidates(9, (40, 56, 40), 8)
    assert [b for b, _, _ in order] == list(range(8, 1, -1)) + [2] * (len(order) - 8) + [1]
    assert order[-1][1] == order[-2][1] and all(p >= PATCH_FLOOR * q - 8 for p, q in zip(order[-1][1], (40, 56, 40)))
    assert {w for _, _, w in order} == {1.0}  # a method without a search width field is never narrowed
    smallest = estimate(*order[-1]).peak
    fit = fit_search(estimate, 9, (40, 56, 40), 8, MemoryTarget(smallest, "t"))
    assert (fit.batch_size, list(fit.patch_size), fit.width_scale) == (1, order[-1][1], 1.0)
    # last, a narrower search at batch 1 and the floor patch, where the method names its width field
    narrow = candidates(9, (40, 56, 40), 8, narrows=True)
    assert narrow[:len(order)] == order and [c[2] for c in narrow[len(order):]] == list(WIDTH_SCALES)
    assert all(c[:2] == order[-1][:2] for c in narrow[len(order):])
    fit = fit_search(estimate, 9, (40, 56, 40), 8, MemoryTarget(int(0.6 * smallest), "t"), width_field="channel_mul")
    assert (fit.batch_size, list(fit.patch_size), fit.width_scale) == (1, order[-1][1], 0.5) and fit.changed
    with pytest.raises(ConfigError):  # without a width field the same target does not fit
        fit_search(estimate, 9, (40, 56, 40), 8, MemoryTarget(int(0.6 * smallest), "t"))


def test_a_narrowed_fit_applies_to_the_config_and_round_trips():
    from nnunet_nas.config import DiNTSSearchConfig
    fit = SearchFit(1, (16, 24, 16), 9, (40, 56, 40), 5, 50, 6, "t", width_scale=0.5, width_field="channel_mul")
    assert SearchFit.from_dict(fit.to_dict()) == fit
    cfg = DiNTSSearchConfig()
    assert fit.applied_to(cfg).channel_mul == cfg.channel_mul * 0.5
    assert "0.5x the search width (channel_mul)" in fit.describe()
    kept = SearchFit(9, (40, 56, 40), 9, (40, 56, 40), 5, 5, 6, "t")
    assert kept.applied_to(cfg) is cfg and not kept.changed


def test_the_fit_counts_few_candidates():
    """Candidates the linear prediction rules out are not counted (each count builds a network)."""
    estimate, calls = _linear(0, 1)
    full = 9 * 40 * 56 * 40
    fit_search(estimate, 9, (40, 56, 40), 8, MemoryTarget(int(full * 0.2 / 9), "t"))
    assert len(calls) <= 3, calls


def test_nothing_fits_is_one_error_with_the_estimate_and_the_options():
    estimate, _ = _linear(10 * GIB, 1)  # the parameters alone exceed the target
    with pytest.raises(ConfigError) as e:
        fit_search(estimate, 2, (64, 64, 64), 16, MemoryTarget(8 * GIB, "free memory"))
    message = str(e.value)
    for needed in ("8.00 GiB", "free memory", "batch 2", "[64, 64, 64]", "batch 1", "narrower", "still", MEMORY_ENV):
        assert needed in message, (needed, message)


def test_the_memory_target_reads_the_environment_then_the_config_then_the_machine(monkeypatch):
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    cpu = torch.device("cpu")
    machine = memory_target(cpu)
    assert 0 < machine.bytes and "available memory" in machine.source
    assert memory_target(cpu, 3.5).bytes == int(3.5 * GIB)
    monkeypatch.setenv(MEMORY_ENV, "12")
    assert memory_target(cpu, 3.5) == MemoryTarget(12 * GIB, f"{MEMORY_ENV}=12")
    monkeypatch.setenv(MEMORY_ENV, "off")
    assert memory_target(cpu, 3.5).bytes is None
    for bad in ("twelve", "-1", "inf", "nan"):
        monkeypatch.setenv(MEMORY_ENV, bad)
        with pytest.raises(EnvironmentSetupError, match=MEMORY_ENV):
            memory_target(cpu)


def test_nnunet_nas_memory_reports_the_search_planned_and_fitted_beside_nnunets_network(planned_dataset, monkeypatch,
                                                                                        capsys):
    """`nnunet-nas memory` without a GPU, once through the installed command and then in this process (it launches
    no nnU-Net command): a card the tiny search fits, a card it fits only after the fit (the batch or patch
    shrinks), the JSON for scripts; and one error line for a card nothing fits and for a trainer that is not a search
    trainer."""
    import json
    from helpers import DATASET_ID, SEARCH_TEST_TRAINERS, one_error_line, point_nnunet_at, run_cli, run_main
    _, env = planned_dataset
    env = dict(env)
    env.pop(MEMORY_ENV, None)
    trainer = SEARCH_TEST_TRAINERS["dints"][0]
    args = ["memory", str(DATASET_ID), "-c", "3d_fullres", "-tr", trainer]
    roomy = json.loads(run_cli(["nnunet-nas", *args, "--gpu-memory", "80", "--json"], env).stdout)
    planned = roomy["search_planned"]
    assert not roomy["search_fitted"]["changed"] and planned["estimate_gib"] > 0
    assert roomy["nnunet_planned_network_gib"] > 0 and roomy["target"] == "a 80 GiB card"
    point_nnunet_at(monkeypatch, env)
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    rc, text, _ = run_main(capsys, args + ["--gpu-memory", "80"])
    assert rc == 0 and "fits as planned" in text and "nnU-Net's planned network" in text
    # a target just below the planned estimate: the fit shrinks the search
    monkeypatch.setenv(MEMORY_ENV, str(0.8 * planned["estimate_gib"]))
    rc, out, _ = run_main(capsys, args + ["--json"])
    tight = json.loads(out)
    assert tight["search_fitted"]["changed"] and tight["search_fitted"]["estimate_gib"] <= tight["target_gib"]
    monkeypatch.delenv(MEMORY_ENV)
    # IAC adds cells to nnU-Net's network: the found network is counted for a sampled architecture
    rc, out, _ = run_main(capsys, ["memory", str(DATASET_ID), "-c", SEARCH_TEST_TRAINERS["iac"][1], "-tr",
                                   SEARCH_TEST_TRAINERS["iac"][0], "--gpu-memory", "80", "--json"])
    report = json.loads(out)
    assert report["found_network_gib"] >= report["nnunet_planned_network_gib"] > 0
    assert "at most 2x nnU-Net's conv feature maps" in report["found_network"]  # the cells' width as exported
    assert roomy["found_network_gib"] is None  # DiNTS: the export fits the width to nnU-Net's planned memory
    for bad, needed in ((["--gpu-memory", "0.001"], "does not fit"),
                        (["-tr", "nnUNetTrainer"], "not a search trainer")):
        rc, _, err = run_main(capsys, args + bad)
        assert needed in one_error_line(rc, err, "memory"), err


def _tiny_search(name, dims):
    from dataclasses import replace as replace_
    from helpers import TINY_CONFIGS, tiny_planned
    from nnunet_nas.nnunet.search_network import SearchNetwork
    from nnunet_nas.patch import round_up_patch
    from nnunet_nas.registry import get_method
    method, cfg = get_method(name), TINY_CONFIGS[name]
    if dims not in method.default_op_sets:
        pytest.skip(f"{name} has no {dims}-D op set")
    geometry, _ = method.search_geometry(cfg, tiny_planned(dims), dims)
    patch = round_up_patch([16] * dims, geometry.divisor if geometry is not None else 4)
    planned = replace_(tiny_planned(dims, tuple(patch)))
    op_set = method.op_set_for(cfg, dims)

    def build():
        torch.manual_seed(0)
        supernet = method.build_supernet(cfg, op_set, 1, 3, dims, True, planned=planned)
        net = SearchNetwork(supernet, method.build_arch_params(cfg, supernet, op_set), method.make_weighting(cfg))
        if method.trained_host:
            for p in supernet.host_parameters():
                p.requires_grad_(False)
        return net
    return build, patch


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", __import__("nnunet_nas.registry", fromlist=["method_names"]).method_names())
def test_the_count_equals_what_every_methods_search_keeps_on_the_plain_path(name, dims):
    """Every registered method's search iteration, counted on fake tensors and run for real on the CPU on the plain
    PyTorch path (the operators CUDA runs: the package's CPU kernels off), keeps the same bytes at the end of both
    steps' forward passes; the fake CUDA count in fp32 is the same again (a count on the CUDA path needs no GPU)."""
    from nnunet_nas.memory_count import count_search_iteration
    from nnunet_nas.ops.conv import plain_torch_paths
    build, patch = _tiny_search(name, dims)
    with plain_torch_paths():
        real = count_search_iteration(build(), 2, patch, 1, device_type="cpu", amp=False, fake=False)
        fake_cpu = count_search_iteration(build(), 2, patch, 1, device_type="cpu", amp=False)
    fake_cuda = count_search_iteration(build(), 2, patch, 1, device_type="cuda", amp=False)
    assert real.arch_step_activations > 0 and real.weight_step_activations > 0
    # the op weights from alpha (a few hundred bytes here) are computed on real tensors and copied into the fake ones
    # where the supernet reads them: the architecture step differs by those copies; the rest byte for byte
    assert abs(real.arch_step_activations - fake_cpu.arch_step_activations) <= 1024, (fake_cpu, real)
    assert fake_cpu.weight_step_activations == real.weight_step_activations, (fake_cpu, real)
    # on the CUDA path the fused attention keeps its row statistics padded (DAST): within 2 %
    for counted in (fake_cpu, fake_cuda):
        assert abs(counted.activations / real.activations - 1) < 0.02, (counted, real)
        assert (counted.parameters, counted.trained_weights) == (real.parameters, real.trained_weights)


def test_the_plans_behind_the_memory_table_are_plans_nnunet_could_make():
    """tests/fixtures/plans/memory_plans.json (read by benchmarks/memory_fit_table.py and gpu_acceptance.py): per
    stage one stride and one kernel per axis, the patch divisible by the product of each axis's strides, a kernel of
    1 only on an axis not pooled yet."""
    import json
    import math
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "plans", "memory_plans.json")
    plans = json.load(open(path))
    assert {"hippocampus_3d_fullres", "pancreas_like_3d_fullres", "brats_like_3d_fullres"} <= set(plans)
    for name, p in plans.items():
        dims = len(p["patch_size"])
        assert len(p["strides"]) == len(p["kernels"]) and p["strides"][0] == [1] * dims, name
        assert all(len(s) == dims and len(k) == dims for s, k in zip(p["strides"], p["kernels"])), name
        for axis in range(dims):
            assert p["patch_size"][axis] % math.prod(s[axis] for s in p["strides"]) == 0, (name, axis)
            pooled = [math.prod(s[axis] for s in p["strides"][:i + 1]) for i in range(len(p["strides"]))]
            assert all(k[axis] == 3 or pooled[i] == 1 for i, k in enumerate(p["kernels"])), (name, axis)
