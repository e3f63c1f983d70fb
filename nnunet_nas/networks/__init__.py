"""The networks nnU-Net builds from a plans entry, with nnU-Net / DNA constructor vocabulary: each method's fixed
network (from a genotype) and, for the grid and the cell U-Nets, the same class as the search supernet (without a
genotype); IAC's implanted U-Net around nnU-Net's planned network; what they share with nnU-Net (``common``)."""
from nnunet_nas.networks.dints_net import DiNTSNet  # noqa: F401
