"""nnU-Net's planned network starting from a trained model of itself: IAC's fair control, the host fine-tuned as long
as the implanted network is, without cells.

``TrainedStart`` is what a configuration's plans name; nnU-Net calls it as it calls any network class
(``get_network_from_plans``) and gets the planned network itself (same class, same weights' names, so its
checkpoints are ordinary nnU-Net checkpoints), whose ``initialize`` hook, after the network's own initialisation,
loads every weight of the trained model ``host_checkpoint`` names, segmentation heads included (nnU-Net's
``-pretrained_weights`` re-initialises those, which IAC's fine-tune does not); its ``fold_{fold}`` is filled in
with the fold of the training that builds it, as for IAC (:mod:`nnunet_nas.nnunet.host`).
"""

from typing import Sequence

from torch import nn

from nnunet_nas.nnunet.host import host_to_load


class TrainedStart:
    def __new__(cls, input_channels: int, num_classes: int, host_class: str, host_kwargs: dict,
                host_checkpoint: str, host_kwargs_requires_import: Sequence[str] = (), deep_supervision: bool = True,
                **unused) -> nn.Module:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        net = get_network_from_plans(host_class, host_kwargs, list(host_kwargs_requires_import), input_channels,
                                     num_classes, allow_init=False, deep_supervision=deep_supervision)
        own = getattr(net, "initialize", None)

        def initialize(module: nn.Module) -> None:  # nnU-Net applies it to every module, the network last
            if own is not None:
                own(module)
            if module is net:
                load_trained_start(net, host_checkpoint, deep_supervision)
        net.initialize = initialize
        return net


def load_trained_start(net: nn.Module, host_checkpoint: str, training: bool) -> None:
    from nnunet_nas.nnunet.search_state import read_checkpoint
    path = host_to_load(host_checkpoint, training, "TrainedStart")
    if path is None:
        return
    weights = {k.replace("_orig_mod.", "").removeprefix("module."): v
               for k, v in read_checkpoint(path)["network_weights"].items()}
    net.load_state_dict(weights)
    print(f"TrainedStart: every weight loaded from {path}")


def trained_start_block(base_architecture: dict, host_checkpoint: str) -> dict:
    """The plans ``architecture`` block of ``base_architecture``'s network starting from ``host_checkpoint``."""
    return {"network_class_name": f"{__name__}.TrainedStart",
            "arch_kwargs": {"host_class": base_architecture["network_class_name"],
                            "host_kwargs": dict(base_architecture["arch_kwargs"]),
                            "host_kwargs_requires_import": list(base_architecture.get("_kw_requires_import", [])),
                            "host_checkpoint": host_checkpoint,
                            # nnU-Net reads the deep-supervision scales from here
                            "strides": base_architecture["arch_kwargs"]["strides"]},
            "_kw_requires_import": []}
