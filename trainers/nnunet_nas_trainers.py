# Shim for nnU-Net's trainer lookup: point nnUNet_extTrainer at this folder (see README).
# Keep it tiny: nnU-Net imports every module here by bare name and purges them afterwards.
from nnunet_nas.nnunet.trainers import *  # noqa: F401,F403
