"""Genotype JSON: round trips, MONAI compatibility, and one clear error per kind of bad input."""

import json

import numpy as np
import pytest
import torch

from nnunet_nas.genotypes.monai_compat import from_monai_codes, load_monai_file, to_monai_codes
from nnunet_nas.genotypes.grid import GridGenotype
from nnunet_nas.genotypes.schema import GenotypeError
from helpers import CVPR_JSON



@pytest.fixture
def cvpr():
    return load_monai_file(CVPR_JSON)


def test_published_architecture_facts(cvpr):
    a = cvpr.arch_code_a.astype(bool)
    from nnunet_nas.spaces.grid_topology import grid_topology
    d = grid_topology(4).edge_dir
    assert a.sum() == 97
    assert [(a & (d == k)).sum() for k in (0, -1, 1)] == [41, 34, 22]  # same, down, up
    names = [o for row in cvpr.ops for o in row if o is not None]
    assert {n: names.count(n) for n in set(names)} == {"conv_3x3x3": 33, "skip": 24, "p3d_3x3x1": 14,
                                                      "p3d_1x3x3": 14, "p3d_3x1x3": 12}
    assert cvpr.node_a[0].tolist() == [1, 1, 1, 0]


def test_dict_and_file_round_trips(cvpr, tmp_path):
    d = cvpr.to_dict()
    assert GridGenotype.from_dict(d).to_dict() == d
    path = tmp_path / "g.json"
    cvpr.save(str(path))
    assert GridGenotype.load(str(path)) == cvpr
    assert json.loads(path.read_text()) == d
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary behind


def test_monai_round_trip(cvpr, tmp_path):
    node_a, code_a, code_c = to_monai_codes(cvpr)
    raw = json.load(open(CVPR_JSON))
    np.testing.assert_array_equal(node_a, raw["node_a"])
    np.testing.assert_array_equal(code_a, raw["arch_code_a"])
    on = np.asarray(raw["arch_code_a"]).astype(bool)
    np.testing.assert_array_equal(code_c[on], np.asarray(raw["arch_code_c"])[on])
    torch.save({"node_a": node_a, "code_a": code_a, "code_c": code_c}, tmp_path / "auto3dseg.pth")
    loaded = load_monai_file(str(tmp_path / "auto3dseg.pth"))
    assert loaded == from_monai_codes(node_a, code_a, code_c, provenance=loaded.provenance)


def _mutated(cvpr, **changes):
    d = cvpr.to_dict()
    d.update(changes)
    return d


@pytest.mark.parametrize("change, message", [
    (dict(version=99), "version 99 is not supported"),
    (dict(schema="something"), "schema is 'something'"),
    (dict(op_set="nope"), "unknown op set"),
    (dict(num_depths=7), "disagree|unsupported"),
])
def test_bad_genotype_dicts_are_refused_clearly(cvpr, change, message):
    with pytest.raises(GenotypeError, match=message):
        GridGenotype.from_dict(_mutated(cvpr, **change))


def test_wrong_shapes_and_infeasible_topologies(cvpr):
    d = cvpr.to_dict()
    d["edges"] = [row[:-1] for row in d["edges"]]
    with pytest.raises(GenotypeError, match=r"edges has shape \[12, 9\], expected \[12, 10\]"):
        GridGenotype.from_dict(d)
    d = cvpr.to_dict()
    d["edges"][5] = [0] * 10
    with pytest.raises(GenotypeError, match="block 5 has no active edge"):
        GridGenotype.from_dict(d)
    d = cvpr.to_dict()
    d["node_a"][3] = [1, 1, 1, 0]
    with pytest.raises(GenotypeError, match="infeasible topology"):
        GridGenotype.from_dict(d)
    d = cvpr.to_dict()
    d["ops"][0][0] = "conv_7x7x7"
    with pytest.raises(GenotypeError, match="not in op set"):
        GridGenotype.from_dict(d)


def test_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "nnunet_nas.grid", "version": 1, ')
    with pytest.raises(GenotypeError, match="not valid JSON"):
        GridGenotype.load(str(bad))
    with pytest.raises(GenotypeError, match="arch_code_a"):
        from_monai_codes(np.ones((13, 4)), np.ones((12, 9)), np.ones((12, 10)))
    torch.save({"node_a": np.ones((3, 2))}, tmp_path / "partial.pth")
    with pytest.raises(GenotypeError, match="missing keys"):
        load_monai_file(str(tmp_path / "partial.pth"))


def test_genotypes_are_read_by_their_schema_name_and_keep_spatial_dims(cvpr, tmp_path):
    from nnunet_nas.genotypes.schema import genotype_from_dict, load_genotype
    assert genotype_from_dict(cvpr.to_dict()) == cvpr
    cvpr.save(str(tmp_path / "g.json"))
    g = load_genotype(str(tmp_path / "g.json"))
    assert isinstance(g, GridGenotype) and g.spatial_dims == 3
    with pytest.raises(GenotypeError, match="schema 'nnunet_nas.cell' is not a genotype schema"):
        genotype_from_dict(_mutated(cvpr, schema="nnunet_nas.cell"))
    # spatial_dims is read back and checked against the op set, never derived from a name
    with pytest.raises(GenotypeError, match="spatial_dims 2 disagrees with op set dints_3d"):
        GridGenotype.from_dict(_mutated(cvpr, spatial_dims=2))
