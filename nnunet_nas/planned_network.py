"""The network nnU-Net planned for a configuration, as a method sees it.

Most methods search a space of their own and ignore it; a method that builds on nnU-Net's own network (IAC implants
cells into it) reads the plans' ``architecture`` block from here, and where the search started from a trained model
of that network, the checkpoint it was trained to (``checkpoint``). ``patch_size`` is the patch the network is
trained and predicts at (after the method's rounding); a space whose ops fit themselves to the feature maps (DAST's
transformer) reads it. The search trainer passes it to the registry's
``build_supernet``, the export to ``fixed_network_kwargs``.
"""

from dataclasses import dataclass, field
from typing import Optional, Tuple


@dataclass(frozen=True)
class PlannedNetwork:
    class_name: str  # dotted path, as in the plans (``network_class_name``)
    kwargs: dict = field(default_factory=dict)  # ``arch_kwargs``
    requires_import: Tuple[str, ...] = ()  # ``_kw_requires_import``
    checkpoint: Optional[str] = None  # a trained model of this network (nnU-Net checkpoint), where a method uses one
    patch_size: Optional[Tuple[int, ...]] = None  # the configuration's patch (spatial extents)

    @classmethod
    def from_block(cls, block: dict, checkpoint: Optional[str] = None, patch_size=None) -> "PlannedNetwork":
        """From a plans ``architecture`` block (and the configuration's patch)."""
        return cls(block["network_class_name"], dict(block.get("arch_kwargs", {})),
                   tuple(block.get("_kw_requires_import", ())), checkpoint,
                   None if patch_size is None else tuple(int(p) for p in patch_size))

    @classmethod
    def from_configuration_manager(cls, configuration_manager, checkpoint: Optional[str] = None) -> "PlannedNetwork":
        return cls(configuration_manager.network_arch_class_name,
                   dict(configuration_manager.network_arch_init_kwargs),
                   tuple(configuration_manager.network_arch_init_kwargs_req_import), checkpoint,
                   tuple(int(p) for p in configuration_manager.patch_size))
