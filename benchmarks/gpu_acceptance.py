"""GPU acceptance run, first part: the real memory and time of one search iteration of every default search trainer,
beside one training iteration of nnU-Net's own planned network (PlainConvUNet) at the same plan.

For each registered method (IAC and the baseline build nnU-Net's planned network, so they need nnunetv2,
batchgenerators and dynamic-network-architectures; where those are missing they are skipped: carry their wheels) and
each plan below, a few search iterations exactly as the search trainer takes them: an architecture step (weights
frozen, AMP, the method's regularisers in fp32, its own GradScaler) and a weight step (alpha frozen, AMP, nnU-Net's
SGD), on random data of the plan's patch and batch
(the patch rounded up as the search trainer rounds it). Written per run, appended to the JSON after every step so a
cut-off run still reports: ``torch.cuda.max_memory_allocated``, seconds per iteration (after one warm-up), or the
out-of-memory error. The rest of the acceptance run (the memory fit, compile, a found configuration trained and
predicted through nnU-Net) comes with the GPU issue.

    PYTHONPATH=. python benchmarks/gpu_acceptance.py --out gpu.json   # on the GPU machine, from a checkout
    python benchmarks/gpu_acceptance.py --device cpu --tiny --out x.json  # the CPU rehearsal (tests run it)
"""

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace

import torch
from torch.nn import functional as F

from nnunet_nas.nnunet.search_network import SearchNetwork
from nnunet_nas.patch import round_up_patch
from nnunet_nas.planned_network import PlannedNetwork
from nnunet_nas.registry import get_method, method_names

# nnU-Net's own 3d_fullres plans (GPU_MEMORY_AUDIT.md): patch, batch, input channels, classes
PLANS = {"hippocampus_3d_fullres": ([40, 56, 40], 9, 1, 3), "pancreas_like_3d_fullres": ([40, 224, 224], 2, 1, 3)}
TINY_PLANS = {"tiny_3d": ([16, 16, 16], 2, 1, 3)}
TINY = {"dints": dict(num_blocks=2, num_depths=2, channel_mul=0.125),
        "dast": dict(num_blocks=2, num_depths=2, channel_mul=0.125),
        "scnas": dict(num_nodes=2, channel_mul=0.0625), "iac": dict(num_nodes=2, partial_channels=2)}
UNET_BLOCK = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
              "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def planned_unet(patch):
    """nnU-Net's PlainConvUNet as its planner would lay it out for this 3-D patch (IAC's host)."""
    strides, shape = [[1, 1, 1]], list(patch)
    while len(strides) < 6 and any(s >= 8 for s in shape):
        step = [2 if s >= 8 else 1 for s in shape]
        strides.append(step)
        shape = [s // t for s, t in zip(shape, step)]
    n = len(strides)
    kwargs = {"n_stages": n, "features_per_stage": [min(32 * 2 ** i, 320) for i in range(n)],
              "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n, "strides": strides,
              "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
              "norm_op_kwargs": {"eps": 1e-5, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    return dict(UNET_BLOCK, arch_kwargs=kwargs)


def build(method, cfg, patch, in_ch, classes, device):
    op_set = method.op_set_for(cfg, 3)
    planned = PlannedNetwork.from_block(planned_unet(patch), patch_size=patch)
    supernet = method.build_supernet(cfg, op_set, in_ch, classes, 3, True, planned=planned)
    net = SearchNetwork(supernet, method.build_arch_params(cfg, supernet, op_set), method.make_weighting(cfg))
    return net.to(device)


def seg_loss(outputs, target):
    """Cross-entropy at every deep-supervision output (targets nearest-downsampled), nnU-Net's weights 1/2^k."""
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    total = 0.0
    for k, out in enumerate(outputs):
        t = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
        total = total + F.cross_entropy(out.float(), t) / 2 ** k
    return total


def weight_step(net, opt, scaler, data, target, device):
    """nnU-Net's own training step: AMP forward, deep-supervision loss, SGD."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        loss = seg_loss(net(data), target)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def iteration(method, cfg, net, opt_w, opt_a, scaler_w, scaler_a, data, target, device):
    """The search trainer's iteration: an architecture step, then :func:`weight_step` with alpha frozen."""
    amp = torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")
    weights = [p for p in net.weight_parameters() if p.requires_grad]
    opt_a.zero_grad(set_to_none=True)
    for p in weights:  # the architecture step needs no weight gradients (the trainer's requires_grad_off)
        p.requires_grad_(False)
    try:
        with amp:
            seg = seg_loss(net(data), target)
        regs = {k: v.float() for k, v in method.regularizers(net, cfg).items()}
        loss = seg + 0.5 * sum(regs.values()) if regs else seg
        scaler_a.scale(loss).backward()
        scaler_a.step(opt_a)
        scaler_a.update()
    finally:
        for p in weights:
            p.requires_grad_(True)
    for p in net.arch_parameters():
        p.grad = None
    net.arch_frozen = True
    try:
        weight_step(net, opt_w, scaler_w, data, target, device)
    finally:
        net.arch_frozen = False


def measured(net, step, iterations: int, device) -> dict:
    """Run ``step`` ``iterations`` times: parameters, mean seconds after the first (warm-up) and, on CUDA, the peak
    of ``torch.cuda.max_memory_allocated`` (reset by the caller before the network was built)."""
    times = []
    for _ in range(iterations):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    out = {"parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
           "seconds_per_iteration": round(sum(times[1:]) / max(1, len(times) - 1), 4)}
    if device.type == "cuda":
        out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
    return out


def run_baseline(plan_name, plan, device, iterations):
    """nnU-Net's planned PlainConvUNet at the plan (the memory the found networks are compared with)."""
    patch, batch, in_ch, classes = plan
    row = {"method": "nnunet_plainconvunet", "plan": plan_name, "search_patch": patch, "batch": batch}
    try:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    except ImportError:
        return dict(row, skipped="nnunetv2 is not installed here")
    block = planned_unet(patch)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    net = get_network_from_plans(block["network_class_name"], block["arch_kwargs"], block["_kw_requires_import"],
                                 in_ch, classes, allow_init=True, deep_supervision=True).to(device)
    opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    data = torch.randn(batch, in_ch, *patch, device=device)
    target = torch.randint(0, classes, (batch, *patch), device=device)
    return dict(row, **measured(net, lambda: weight_step(net, opt, scaler, data, target, device), iterations,
                                device))


def run_one(name, plan_name, plan, device, tiny, iterations):
    method = get_method(name)
    cfg = method.config_class()
    if tiny:
        cfg = replace(cfg, **TINY[name])
    patch, batch, in_ch, classes = plan
    patch = round_up_patch(patch, method.search_patch_divisor(cfg))
    row = {"method": name, "plan": plan_name, "search_patch": patch, "batch": batch}
    if method.trained_host:
        try:
            import dynamic_network_architectures  # noqa: F401
            import nnunetv2  # noqa: F401
        except ImportError:
            return dict(row, skipped="IAC builds on nnU-Net's planned network: nnunetv2 is not installed here")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        torch.manual_seed(0)
        net = build(method, cfg, patch, in_ch, classes, device)
        opt_w = torch.optim.SGD(list(net.weight_parameters()), 0.01, momentum=0.99, nesterov=True)
        opt_a = torch.optim.Adam(list(net.arch_parameters()), lr=cfg.arch_lr, betas=tuple(cfg.arch_betas))
        scalers = [torch.amp.GradScaler(device.type, enabled=device.type == "cuda") for _ in range(2)]
        data = torch.randn(batch, in_ch, *patch, device=device)
        target = torch.randint(0, classes, (batch, *patch), device=device)
        row.update(measured(net, lambda: iteration(method, cfg, net, opt_w, opt_a, *scalers, data, target, device),
                            iterations, device))
    except torch.cuda.OutOfMemoryError as e:
        row.update(oom=True, message=str(e).splitlines()[0][:200])
        if device.type == "cuda":
            row["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny configs and plan (the CPU rehearsal)")
    p.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    p.add_argument("--iterations", type=int, default=None, help="default: 3 (2 with --tiny)")
    p.add_argument("--out", required=True, help="JSON written after every run")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    report = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
                          "total_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
                          if device.type == "cuda" else None}, "runs": []}
    plans = TINY_PLANS if args.tiny else PLANS
    iterations = args.iterations or (2 if args.tiny else 3)
    for plan_name, plan in plans.items():
        for name in ["nnunet"] + (args.methods or method_names()):
            row = run_baseline(plan_name, plan, device, iterations) if name == "nnunet" else \
                run_one(name, plan_name, plan, device, args.tiny, iterations)
            report["runs"].append(row)
            print(json.dumps(row), flush=True)
            with open(args.out + ".tmp", "w") as f:
                json.dump(report, f, indent=1)
            os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
