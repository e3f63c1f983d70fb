"""One tiny search config per registered method (the test-fixture entry a new method adds): small enough that
its supernet runs forward and backward on a 2-D and a 3-D patch in about a second; and the tiny network nnU-Net
would plan (a 3-stage PlainConvUNet), which methods that build on nnU-Net's network (IAC) read."""

from dataclasses import replace

from nnunet_nas.config import DASTSearchConfig, DiNTSSearchConfig, IACSearchConfig, SCNASSearchConfig
from nnunet_nas.planned_network import PlannedNetwork

TINY_CONFIGS = {
    "dints": replace(DiNTSSearchConfig(), num_blocks=2, num_depths=2, channel_mul=0.125, export_channel_mul=0.125),
    "scnas": replace(SCNASSearchConfig(), num_nodes=2, channel_mul=0.0625, export_channel_mul=0.0625),
    "iac": replace(IACSearchConfig(), num_nodes=2, partial_channels=2),
    "dast": replace(DASTSearchConfig(), num_blocks=2, num_depths=2, channel_mul=0.125, export_channel_mul=0.125),
}


def tiny_planned_block(dims: int) -> dict:
    """A plans ``architecture`` block as nnU-Net writes it: PlainConvUNet, 3 stages of 4, 8, 16 channels."""
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16],
                            "conv_op": f"torch.nn.modules.conv.Conv{dims}d", "kernel_sizes": [[3] * dims] * 3,
                            "strides": [[1] * dims, [2] * dims, [2] * dims], "n_conv_per_stage": [2, 2, 2],
                            "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def tiny_planned(dims: int, patch_size=None) -> PlannedNetwork:
    return PlannedNetwork.from_block(tiny_planned_block(dims), patch_size=patch_size)
