"""nnunet_nas: neural architecture search (DiNTS, ...) as nnU-Net v2 trainers and configurations."""

__version__ = "0.3.0"
