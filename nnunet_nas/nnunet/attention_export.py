"""The segmentation attention of a trained network's transformer cells for one case, as an image aligned with the
input (DAST paper, Fig. 4): a NIfTI overlay in the input's geometry and a PNG of one slice.

The case goes through nnU-Net's own preprocessing (crop, resample, normalise) and the trained model of a fold
(nnU-Net's predictor loads it). One patch of the configuration's size (centred on the image, or on ``center`` in
preprocessed voxel coordinates; a 2-D configuration reads one slice) runs through the network; each transformer cell's
attention weights (:meth:`~nnunet_nas.ops.transformer.TransformerOp.attention_maps`, ``[heads, queries, memory
tokens]``) are averaged over heads and queries, i.e. how much attention each memory token (one cell of the token
grid) receives, resized from the token grid to the patch, and put back where the patch lies. nnU-Net's own inverse
steps (resampling to the cropped shape, un-cropping, transposing back) bring the map into the input's geometry; outside
the patch it is zero.
"""

import os
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from nnunet_nas.errors import InputFileError, MissingFileError
from nnunet_nas.io import atomic_path
from nnunet_nas.ops.transformer import TransformerOp


def transformer_ops(network: torch.nn.Module):
    """``[(name, op)]`` of the network's transformer operations (module names as in its state dict)."""
    return [(name, m) for name, m in network.named_modules() if isinstance(m, TransformerOp)]


def _cell_label(name: str) -> str:
    """``space.cells.b5_e3.ops.transformer`` -> ``b5_e3``."""
    parts = name.split(".")
    return next((p for p in parts if p.startswith("b") and "_e" in p), name.replace(".", "_"))


def _window(shape: Sequence[int], patch: Sequence[int], center: Optional[Sequence[int]]):
    """Zero padding (before, after) per axis so the image holds the patch, and the patch's start in the padded
    image (centred on ``center``, clamped inside)."""
    pads, starts = [], []
    for i, (s, p) in enumerate(zip(shape, patch)):
        total = max(p - s, 0)
        pads.append((total // 2, total - total // 2))
        c = (s // 2 if center is None else int(center[i])) + total // 2
        starts.append(int(np.clip(c - p // 2, 0, s + total - p)))
    return pads, starts


def attention_maps(network: torch.nn.Module, patch: torch.Tensor) -> dict:
    """``{cell name: map [*patch spatial]}``: the attention each location's token receives, averaged over heads and
    queries, for one input ``patch`` ``[1, C, *S]``."""
    cells = transformer_ops(network)
    inputs = {}
    hooks = [op.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0]))
             for name, op in cells]
    try:
        with torch.no_grad():
            network(patch)
    finally:
        for h in hooks:
            h.remove()
    size = list(patch.shape[2:])
    mode = "bilinear" if len(size) == 2 else "trilinear"
    out = {}
    for name, op in cells:
        if name not in inputs:  # a cell the forward pass did not reach
            continue
        weights = op.attention_maps(inputs[name])  # [1, heads, queries, memory tokens]
        grid = weights.mean(dim=(1, 2)).reshape(1, 1, *op.token_grid)
        out[name] = F.interpolate(grid, size=size, mode=mode, align_corners=False)[0, 0]
    return out


def export_attention(model_folder: str, image_files: Sequence[str], output_folder: str, fold=0,
                     checkpoint_name: str = "checkpoint_final.pth", center: Optional[Sequence[int]] = None,
                     log=print) -> List[str]:
    """Write ``<case>_<cell>_attention.nii.gz`` and ``.png`` for every transformer cell of the trained model in
    ``model_folder`` (nnU-Net's ``<trainer>__<plans>__<configuration>``) on the case ``image_files`` (one file per
    input channel, as nnUNetv2_predict takes them). Returns the written paths."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    missing = [f for f in image_files if not os.path.isfile(f)]
    if missing:
        raise MissingFileError(f"attention export: no such image file {missing}.")
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    fold_folder = os.path.join(model_folder, f"fold_{fold}")
    if not os.path.isfile(os.path.join(fold_folder, checkpoint_name)):
        raise MissingFileError(f"{os.path.join(fold_folder, checkpoint_name)}: no trained model there. Train it "
                                f"first (nnUNetv2_train ... {fold}) or pass the model folder and fold that hold it.")
    predictor.initialize_from_trained_model_folder(model_folder, (fold,), checkpoint_name)
    network = predictor.network
    network.load_state_dict(predictor.list_of_parameters[0])
    network.eval()
    cells = transformer_ops(network)
    if not cells:
        raise InputFileError(f"the network of {model_folder} has no transformer cell, so there is no attention to "
                             f"export (a DAST architecture whose genotype names the 'transformer' op has them).")
    pm, cm = predictor.plans_manager, predictor.configuration_manager
    original = _read_case(pm, predictor.dataset_json, image_files)
    if center is not None and len(center) != original.ndim - 1:
        raise InputFileError(f"attention export: --center has {len(center)} values; give {original.ndim - 1} (z y x in "
                             f"preprocessed voxels).")
    data, _, props = cm.preprocessor_class(verbose=False).run_case(list(image_files), None, pm, cm,
                                                                   predictor.dataset_json)
    if "sitk_stuff" not in props:
        raise InputFileError("attention export writes NIfTI through SimpleITK; this dataset's images are read by "
                         f"{pm.image_reader_writer_class.__name__}, which records no SimpleITK geometry.")
    patch = [int(p) for p in cm.patch_size]
    spatial = list(data.shape[1:])  # [Z, Y, X] in nnU-Net's (transposed) axis order
    if len(patch) == 2:  # one slice of a 2-D configuration
        z = spatial[0] // 2 if center is None else int(center[0])
        if not 0 <= z < spatial[0]:
            raise InputFileError(f"attention export: slice {z} is outside the preprocessed image's {spatial[0]} "
                                 f"slices; give a --center inside it.")
        image, in_plane_center = data[:, z], None if center is None else center[1:]
    else:
        image, in_plane_center = data, center
    if center is not None:
        outside = [(axis, int(c), n) for axis, (c, n) in enumerate(zip(center, spatial)) if not 0 <= int(c) < n]
        if outside:
            raise InputFileError(f"attention export: --center {list(center)} lies outside the preprocessed image "
                                 f"{spatial} (z y x) on axis {outside[0][0]}; give voxel indices inside it.")
    pads, starts = _window(image.shape[1:], patch, in_plane_center)
    padded = np.pad(image, [(0, 0)] + pads)
    box = tuple(slice(s, s + p) for s, p in zip(starts, patch))
    window = torch.from_numpy(np.ascontiguousarray(padded[(slice(None),) + box])).float()[None]
    maps = attention_maps(network, window)
    case = os.path.basename(image_files[0]).split(".")[0]
    case = case[:-5] if case.endswith("_0000") else case
    os.makedirs(output_folder, exist_ok=True)
    written = []
    for name, attention in maps.items():
        full = np.zeros(padded.shape[1:], dtype=np.float32)
        full[box] = attention.numpy()
        full = full[tuple(slice(a, full.shape[i] - b) for i, (a, b) in enumerate(pads))]
        if len(patch) == 2:
            volume = np.zeros(spatial, dtype=np.float32)
            volume[z] = full
        else:
            volume = full
        volume = _to_input_geometry(volume, pm, cm, props)
        stem = os.path.join(output_folder, f"{case}_{_cell_label(name)}_attention")
        _write_nifti(volume, props, stem + ".nii.gz")
        _write_png(original[0], volume, stem + ".png", f"{case}: segmentation attention of {_cell_label(name)}")
        written += [stem + ".nii.gz", stem + ".png"]
        log(f"{name}: token grid {'x'.join(map(str, dict(cells)[name].token_grid))} -> {stem}.nii.gz / .png")
    return written


def _read_case(pm, dataset_json: dict, image_files: Sequence[str]) -> np.ndarray:
    """The case's images ``[C, *spatial]`` as nnU-Net's reader reads them; one error naming the file when a file is
    not an image, the number of files is not the dataset's number of input channels, or the channels differ in
    shape."""
    expected = len(dataset_json.get("channel_names", {}))
    if len(image_files) != expected:
        raise InputFileError(f"attention export: {len(image_files)} image files given, but the dataset has {expected} "
                             f"input channel(s) ({dataset_json.get('channel_names')}); pass one file per channel "
                             f"(CASE_0000{dataset_json.get('file_ending', '.nii.gz')}, CASE_0001..., in order).")
    reader = pm.image_reader_writer_class()
    shapes = []
    for f in image_files:
        try:
            image, _ = reader.read_images([f])
        except Exception as e:  # noqa: BLE001 - any unreadable image means the same to the user
            raise InputFileError(f"attention export: {f} cannot be read as an image by "
                                 f"{type(reader).__name__} ({type(e).__name__}: {e}).") from None
        if image.ndim != 4 or image.shape[0] != 1:
            raise InputFileError(f"attention export: {f} reads as {image.shape[0]} channel(s) of shape "
                                 f"{list(image.shape[1:])}; each file must be one channel of a 2-D or 3-D image (a "
                                 f"4-D or multi-component file is not one case's channel).")
        shapes.append(image.shape[1:])
    if len(set(shapes)) > 1:
        raise InputFileError(f"attention export: the channel images differ in shape ({dict(zip(image_files, shapes))});"
                             f" they must be the same case's channels.")
    original, _ = reader.read_images(list(image_files))
    return original


def _to_input_geometry(volume: np.ndarray, pm, cm, props) -> np.ndarray:
    """nnU-Net's inverse of its preprocessing for a map of the preprocessed image (as export_prediction does for
    probabilities): resample to the cropped shape, un-crop, transpose back."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
    spacing = [props["spacing"][i] for i in pm.transpose_forward]
    cropped_shape = props["shape_after_cropping_and_before_resampling"]
    current = cm.spacing if len(cm.spacing) == len(cropped_shape) else [spacing[0], *cm.spacing]
    resampled = np.asarray(cm.resampling_fn_probabilities(volume[None], cropped_shape, current, spacing))[0]
    uncropped = insert_crop_into_image(np.zeros(props["shape_before_cropping"], dtype=np.float32),
                                       resampled.astype(np.float32), props["bbox_used_for_cropping"])
    return np.asarray(uncropped).transpose(pm.transpose_backward)


def _write_nifti(volume: np.ndarray, props: dict, path: str) -> None:
    import SimpleITK as sitk
    geometry = props["sitk_stuff"]
    image = sitk.GetImageFromArray(volume[0] if len(geometry["spacing"]) == 2 else volume)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, tmp + ".nii.gz", True)
        os.replace(tmp + ".nii.gz", tmp)


def _write_png(image: np.ndarray, attention: np.ndarray, path: str, title: str) -> None:
    """The middle slice (first axis) of the patch the map covers: the image in grey, the map over it."""
    from nnunet_nas.viz import new_figure, save_png
    covered = np.flatnonzero(attention.reshape(attention.shape[0], -1).max(1) > 0)
    z = int(covered[len(covered) // 2]) if covered.size else attention.shape[0] // 2
    fig = new_figure(5.0, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(image[z], cmap="gray")
    shown = np.ma.masked_where(attention[z] <= 0, attention[z])
    im = ax.imshow(shown, cmap="jet", alpha=0.45)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mean attention weight")
    ax.set_title(f"{title}\n(slice {z})", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    save_png(fig, path)
