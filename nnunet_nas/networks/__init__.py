"""Fixed networks built from a genotype alone, with nnU-Net / DNA constructor vocabulary."""
from nnunet_nas.networks.dints_net import DiNTSNet  # noqa: F401
