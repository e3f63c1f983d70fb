"""The width of an exported network, fitted to the memory nnU-Net planned for the base configuration.

nnU-Net sizes every configuration to a GPU-memory target: its planner estimates a network's training memory from
``compute_conv_feature_map_size`` (dynamic_network_architectures' convention: the elements of every conv output of
one forward pass at batch 1, transposed convs and segmentation heads included) times the batch size. A found
architecture exported at an arbitrary width is no fair drop-in, so by default the export chooses the channel
multiplier at which the found network's estimate at the configuration's patch and batch equals the estimate for
the network nnU-Net planned for the base configuration, both by the same counter: :func:`conv_output_elements`
(for nnU-Net's own U-Nets it returns exactly their ``compute_conv_feature_map_size``; tested). Batch and patch are
the same on both sides, so they cancel. An explicit ``--channel-mul`` (or the search config's
``export_channel_mul``) wins. Linear-layer outputs count like conv outputs (nnU-Net's U-Nets have none): a DAST
transformer op is then counted by its projections and attention outputs, 22 x C x tokens elements, where the
conv op it replaces counts C x voxels.

The counter runs the network on PyTorch's ``meta`` device: shapes only, no memory, no arithmetic.
"""

from typing import Callable, Sequence, Tuple

from torch import nn

from nnunet_nas.networks.common import conv_output_elements  # noqa: F401 - its home before 0.2

FIT_TOLERANCE = 0.02  # relative: integer channel counts make the estimate a step function of the multiplier


def fit_channel_mul(build: Callable[[float], nn.Module], input_channels: int, patch_size: Sequence[int],
                    target: int, start: float = 1.0, max_iterations: int = 6) -> Tuple[float, int]:
    """The channel multiplier at which ``build(mul)`` has ``target`` conv-output elements (within
    :data:`FIT_TOLERANCE` below it, never above); returns ``(mul, elements at mul)``. Elements grow about linearly
    with the multiplier (plus a constant where part of the network keeps its width, as IAC's host), so a few secant
    steps from ``start`` suffice: the first through the origin, the next through the last two widths tried. Where
    integer channel counts allow no width within the tolerance (a narrow network: one channel more is a big step), the
    widest width tried that stays at or below the target wins; only when every buildable width tried is above it is
    the narrowest one returned (found by bisection where a step fell below the narrowest buildable width)."""
    mul = float(start)
    elements = conv_output_elements(lambda: build(mul), input_channels, patch_size)
    tried = [(mul, elements)]
    for _ in range(max_iterations):
        if elements <= target and target - elements <= FIT_TOLERANCE * target:
            return round(mul, 4), elements
        aim = target * (1.0 - FIT_TOLERANCE / 4)  # just below: flooring makes steps
        (m0, e0), (m1, e1) = tried[-2] if len(tried) > 1 else (0.0, 0), tried[-1]
        slope = (e1 - e0) / (m1 - m0) if m1 != m0 and e1 > e0 else elements / mul
        mul = m1 + (aim - e1) / slope
        if mul <= 0:
            mul = m1 * target / e1 * (1.0 - FIT_TOLERANCE / 4)
        try:
            elements = conv_output_elements(lambda: build(mul), input_channels, patch_size)
        except ValueError:  # below the narrowest buildable width: bisect for it, from the narrowest tried
            lo, hi = mul, min(t[0] for t in tried)
            for _ in range(8):
                m = (lo + hi) / 2
                try:
                    tried.append((m, conv_output_elements(lambda: build(m), input_channels, patch_size)))
                    hi = m
                except ValueError:
                    lo = m
            break
        tried.append((mul, elements))
    below = [t for t in tried if t[1] <= target]
    mul, elements = max(below, key=lambda t: t[1]) if below else min(tried, key=lambda t: t[1])
    return round(mul, 4), elements


def planned_network_elements(plans_path: str, base_config: str, input_channels: int, num_classes: int) -> int:
    """:func:`planned_elements` of the network nnU-Net planned for ``base_config`` in the plans file."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_nas.planned_network import PlannedNetwork
    planned = PlannedNetwork.from_configuration_manager(PlansManager(plans_path).get_configuration(base_config))
    return planned_elements(planned, input_channels, num_classes, f"configuration {base_config!r}",
                            "to fit the exported width to it; pass an explicit --channel-mul")


def planned_elements(planned, input_channels: int, num_classes: int, what: str = "the configuration",
                     purpose: str = "to count the memory budget against it") -> int:
    """:func:`conv_output_elements` of nnU-Net's planned network (a
    :class:`~nnunet_nas.planned_network.PlannedNetwork`; deep supervision on, as nnU-Net trains it) at its patch."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunet_nas.nnunet.plans_io import PlansError
    try:
        return conv_output_elements(
            lambda: get_network_from_plans(planned.class_name, planned.kwargs, planned.requires_import,
                                           input_channels, num_classes, allow_init=False, deep_supervision=True),
            input_channels, planned.patch_size)
    except Exception as e:  # noqa: BLE001 - whatever the planned class does, the user's fix is the same
        raise PlansError(f"cannot build the network planned for {what} ({planned.class_name}: {type(e).__name__}: "
                         f"{e}) {purpose}.") from None
