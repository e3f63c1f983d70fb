"""One tiny search config per registered method (the test-fixture entry a new method adds): small enough that
its supernet runs forward and backward on a 2-D and a 3-D patch in about a second."""

from dataclasses import replace

from nnunet_nas.config import DiNTSSearchConfig, SCNASSearchConfig

TINY_CONFIGS = {
    "dints": replace(DiNTSSearchConfig(), num_blocks=2, num_depths=2, channel_mul=0.125, export_channel_mul=0.125),
    "scnas": replace(SCNASSearchConfig(), num_nodes=2, channel_mul=0.0625, export_channel_mul=0.0625),
}
