"""Figures: the found architecture and the architecture-parameter trajectories (PNG files)."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from nnunet_nas.genotypes.grid import GridGenotype  # noqa: E402
from nnunet_nas.viz import plot_arch_trajectories, plot_grid_genotype  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
from helpers import CVPR_JSON as PUBLISHED  # noqa: E402


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC and os.path.getsize(path) > 1000


def _tiny_genotype():
    # D=2, L=2: edges e0 0->0, e1 1->0, e2 0->1, e3 1->1; block 0 reads level 0 only, writes both levels
    return GridGenotype("dints_3d", np.array([[1, 0], [1, 1], [1, 0]]), np.array([[1, 0, 1, 0], [1, 1, 0, 0]]),
                        [["conv_3x3x3", None, "p3d_3x3x1", None], ["skip", "p3d_1x3x3", None, None]])


def test_import_does_not_load_matplotlib():
    code = "import sys, nnunet_nas.viz; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_grid_genotype(tmp_path):
    g = _tiny_genotype()
    g.validate()
    out = plot_grid_genotype(g, str(tmp_path / "tiny.png"), title="tiny")
    assert out == str(tmp_path / "tiny.png") and _is_png(out)
    if os.path.exists(PUBLISHED):
        from nnunet_nas.genotypes.monai_compat import load_monai_file

        path = str(tmp_path / "sub" / "cvpr.png")  # missing folders are created
        plot_grid_genotype(load_monai_file(PUBLISHED), path)
        assert _is_png(path)
    assert sorted(os.listdir(tmp_path)) == ["sub", "tiny.png"]  # no temporary files left behind


def _history(T=4, L=2, D=2, N=5, full=True, seed=0):
    rng = np.random.default_rng(seed)
    E = 3 * D - 2
    ops = rng.random((T, L, E, N))
    h = {"epoch": list(range(T)), "edge_probs": rng.random((T, L, E)).tolist(),
         "op_probs": (ops / ops.sum(-1, keepdims=True)).tolist(),
         "op_names": ["skip", "conv_3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"]}
    if full:
        h.update(gap=[3, 2, None, 1][:T], memory_ratio=np.linspace(0.1, 0.2, T).tolist(), sigma=0.15,
                 max_ratio=0.254, topology_loss=np.linspace(30, 20, T).tolist(),
                 entropy_alpha=np.linspace(0.32, 0.2, T).tolist(), entropy_eta=np.linspace(6e-3, 1e-3, T).tolist())
    return h


def test_plot_arch_trajectories(tmp_path):
    full = str(tmp_path / "traj.png")
    plot_arch_trajectories(_history(), full)
    assert _is_png(full)
    minimal = str(tmp_path / "traj_min.png")
    plot_arch_trajectories(_history(T=1, L=1, D=3, full=False), minimal)  # only the two required panels
    assert _is_png(minimal)
    plot_arch_trajectories(_history(seed=1), full)  # overwrite in place
    assert _is_png(full)
    bad = _history()
    bad["op_names"] = bad["op_names"][:3]
    with pytest.raises(ValueError, match="op_probs"):
        plot_arch_trajectories(bad, str(tmp_path / "bad.png"))


def test_plot_segmentation_comparison(tmp_path):
    from nnunet_nas.viz import plot_segmentation_comparison
    rng = np.random.RandomState(0)
    image = rng.normal(size=(8, 20, 16)).astype(np.float32)
    truth = (rng.uniform(size=image.shape) > 0.7).astype(np.uint8) * 2
    path = plot_segmentation_comparison(image, truth, {"nnU-Net": truth, "DiNTS": np.zeros_like(truth)},
                                        str(tmp_path / "case.png"), title="case")
    assert os.path.getsize(path) > 1000
