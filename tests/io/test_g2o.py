"""g2o reading and writing (posegraph.io.g2o): tags, layout, information matrices, quaternions,
errors naming file and line, exact round trips and atomic writes."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import posegraph.io.g2o as g2o_mod
import posegraph.io.g2o_write as g2o_write_mod
from posegraph import G2oFormatError, PoseGraph, read_g2o, write_g2o
from posegraph.io.g2o_write import format_g2o

from conftest import IDENTITY21, SE2_TEXT, theseus_to_homogeneous


def read_quietly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid file gives no warning at all
        return read_g2o(path)


# -- reading: layout -------------------------------------------------------------------------------


def test_se2_vertices_edges_layout(write_file):
    g = read_quietly(write_file("a.g2o", SE2_TEXT))
    assert g.kind == "SE2" and g.num_poses == 3 and g.num_edges == 3
    assert g.dtype == torch.float64
    assert g.ids.tolist() == [0, 1, 2]
    assert g.poses.shape == (3, 4) and g.measurements.shape == (3, 4)
    # Theseus SE2 layout [x, y, cos θ, sin θ]
    torch.testing.assert_close(g.poses[2], torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64), atol=1e-15, rtol=0)
    assert g.edges.tolist() == [[0, 1], [1, 2], [2, 0]]
    assert g.edges.dtype == torch.long
    assert g.fixed.tolist() == [False, False, False]
    assert g.edge_lines == [4, 5, 6] and g.vertex_lines == [1, 2, 3]
    assert g.source == str(write_file("a.g2o", SE2_TEXT))


def test_se3_quaternion_and_translation(write_file):
    s = math.sqrt(0.5)
    text = (
        f"VERTEX_SE3:QUAT 0 1 2 3 0 0 {s!r} {s!r}\n"  # 90° about z
        "VERTEX_SE3:QUAT 1 0 0 0 0 0 0 1\n"
        f"EDGE_SE3:QUAT 0 1 0 0 0 1 0 0 0 {IDENTITY21}\n"  # 180° about x (qx = 1, qw = 0)
    )
    g = read_quietly(write_file("q.g2o", text))
    assert g.kind == "SE3" and g.poses.shape == (2, 3, 4)
    expected = torch.tensor([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3]], dtype=torch.float64)
    torch.testing.assert_close(g.poses[0], expected, atol=1e-15, rtol=0)
    torch.testing.assert_close(
        g.measurements[0, :, :3], torch.diag(torch.tensor([1.0, -1, -1], dtype=torch.float64)), atol=1e-15, rtol=0
    )


def test_se2_information_upper_triangle_order(write_file):
    # I11 I12 I13 I22 I23 I33
    text = "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nEDGE_SE2 0 1 1 0 0 10 1 2 20 3 30\n"
    g = read_quietly(write_file("i.g2o", text))
    expected = torch.tensor([[10.0, 1, 2], [1, 20, 3], [2, 3, 30]], dtype=torch.float64)
    assert torch.equal(g.information[0], expected)


def test_se3_information_upper_triangle_order(write_file):
    # 21 distinct values, row-major upper triangle: Ω[r, c] for r ≤ c in file order
    dof = 6
    values = []
    expected = np.zeros((dof, dof))
    k = 0
    for r in range(dof):
        for c in range(r, dof):
            v = 100.0 if r == c else 0.01 * (k + 1)
            values.append(v)
            expected[r, c] = expected[c, r] = v
            k += 1
    assert len(values) == 21
    text = (
        "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"
        "EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 " + " ".join(map(repr, values)) + "\n"
    )
    g = read_quietly(write_file("i3.g2o", text))
    info = g.information[0].numpy()
    assert np.array_equal(info, expected)
    assert np.array_equal(info, info.T)
    # spot checks against the file order
    assert info[0, 1] == values[1] and info[0, 5] == values[5] and info[1, 1] == values[6]
    assert info[4, 5] == values[19] and info[5, 5] == values[20]


def test_comments_blank_lines_crlf_tabs_noncontiguous_ids(write_file):
    text = (
        "# a comment line\r\n"
        "\r\n"
        "VERTEX_SE2\t10\t0 0 0   # trailing comment\r\n"
        "   \t  \r\n"
        "VERTEX_SE2 40 1 0 0\r\n"
        "VERTEX_SE2 25 2 0 0\r\n"
        "EDGE_SE2\t10 40 1 0 0 1 0 0 1 0 1\r\n"
        "EDGE_SE2 40 25 1 0 0 1 0 0 1 0 1 # loop\r\n"
        "# the end"
    )
    g = read_quietly(write_file("c.g2o", text))
    assert g.ids.tolist() == [10, 40, 25]  # storage order = file order
    assert g.edges.tolist() == [[0, 1], [1, 2]]
    assert g.edge_lines == [7, 8]
    assert g.poses[:, 0].tolist() == [0.0, 1.0, 2.0]


def test_unknown_tags_one_warning_per_tag_with_count(write_file):
    text = (
        "PARAMS_SE2OFFSET 0 0 0 0\n"
        + SE2_TEXT
        + "VERTEX_XY 7 1 2\nVERTEX_XY 8 1 2\nVERTEX_XY 9 1 2\nEDGE_SE2_XY 0 7 1 1 1 0 1\n"
    )
    path = write_file("u.g2o", text)
    with pytest.warns(UserWarning) as record:
        g = read_g2o(path)
    msgs = [str(w.message) for w in record if "unsupported tag" in str(w.message)]
    assert len(msgs) == 3, msgs
    by_tag = {tag: m for m in msgs for tag in ("PARAMS_SE2OFFSET", "VERTEX_XY", "EDGE_SE2_XY") if m.endswith(tag)}
    assert "skipped 1 line" in by_tag["PARAMS_SE2OFFSET"]
    assert "skipped 3 line" in by_tag["VERTEX_XY"]
    assert "skipped 1 line" in by_tag["EDGE_SE2_XY"]
    assert all(str(path) in m for m in msgs)
    assert g.num_poses == 3 and g.num_edges == 3


def test_fix_lines(write_file):
    text = SE2_TEXT + "FIX 2\nFIX 0 1\n"
    g = read_quietly(write_file("f.g2o", text))
    assert g.fixed.tolist() == [True, True, True]
    g = read_quietly(write_file("f1.g2o", "FIX 1\n" + SE2_TEXT))
    assert g.fixed.tolist() == [False, True, False]


def test_fix_unknown_vertex_is_an_error(write_file):
    path = write_file("f.g2o", SE2_TEXT + "FIX 9\n")
    with pytest.raises(G2oFormatError) as exc:
        read_g2o(path)
    assert exc.value.line == 7 and "9" in exc.value.message


def test_quaternion_far_from_unit_warns_and_is_normalized(write_file):
    text = (
        "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 2\n"  # ‖q‖ = 2
        "VERTEX_SE3:QUAT 1 1 0 0 0 0 0 1.0000001\n"  # within float64's precision: silent
        f"EDGE_SE3:QUAT 0 1 1 0 0 0 0 3 4 {IDENTITY21}\n"  # ‖q‖ = 5
    )
    path = write_file("q.g2o", text)
    with pytest.warns(UserWarning) as record:
        g = read_g2o(path)
    msgs = [str(w.message) for w in record]
    assert len(msgs) == 2, msgs  # one for the vertices, one for the edges
    assert any(f"{path}:1: VERTEX_SE3:QUAT 0: |‖q‖ − 1| = 1, beyond the precision 0.001" in m for m in msgs), msgs
    assert any(f"{path}:3: EDGE_SE3:QUAT 0 1: |‖q‖ − 1| = 4" in m and "normalized" in m for m in msgs), msgs
    assert not any(f"{path}:2:" in m for m in msgs)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(g.poses[0, :, :3], eye, atol=1e-15, rtol=0)
    torch.testing.assert_close(g.poses[1, :, :3], eye, atol=1e-15, rtol=0)
    R = g.measurements[0, :, :3]
    torch.testing.assert_close(R @ R.T, eye, atol=1e-14, rtol=0)
    # qz/qw = 3/4 → angle about z = 2·atan2(3, 4)
    a = 2 * math.atan2(3, 4)
    torch.testing.assert_close(R[0, 0], torch.tensor(math.cos(a), dtype=torch.float64), atol=1e-14, rtol=0)


def test_norm_two_quaternion_reads_as_the_normalized_one_with_a_warning(write_file):
    q = np.array([0.1, -0.2, 0.3, 0.9])
    unit, double = q / np.linalg.norm(q), 2 * q / np.linalg.norm(q)
    line = "EDGE_SE3:QUAT 0 1 1 2 3 {} {}\n"
    v0 = "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"
    normalized = read_quietly(write_file("unit.g2o", v0 + line.format(" ".join(repr(float(v)) for v in unit), IDENTITY21)))
    path = write_file("double.g2o", v0 + line.format(" ".join(repr(float(v)) for v in double), IDENTITY21))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = read_g2o(path)
    assert len(caught) == 1 and caught[0].filename == __file__, [str(w.message) for w in caught]
    assert str(caught[0].message).startswith(f"{path}:3: EDGE_SE3:QUAT 0 1: |‖q‖ − 1| = 1, beyond the precision 1e-06")
    torch.testing.assert_close(g.measurements, normalized.measurements, atol=1e-15, rtol=0)


def test_printed_precision_of_quaternions(write_file):
    """4 decimals: within their precision (1e-4), silent; a sensor offset's quaternion follows
    the same rule, naming its line."""
    rng = np.random.default_rng(11)
    q = rng.normal(size=(300, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    lines = [f"EDGE_SE3:QUAT {k} {k + 1} 1 0 0 " + " ".join(f"{v:.4f}" for v in q[k]) + f" {IDENTITY21}" for k in range(300)]
    assert np.abs(np.linalg.norm(np.round(q, 4), axis=1) - 1).max() > 1e-5
    g = read_quietly(write_file("four.g2o", "\n".join(lines) + "\n"))
    assert g.num_edges == 300
    text = (
        "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"
        f"EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 {IDENTITY21}\n"
        "VERTEX_TRACKXYZ 5 1 2 3\nPARAMS_SE3OFFSET 0 0 0 0 0 0 0 1.01\n"
        "EDGE_SE3_TRACKXYZ 0 5 0 1 2 3 1 0 0 1 0 1\n"
    )
    path = write_file("offset.g2o", text)
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))}:5: PARAMS_SE3OFFSET 0: \|‖q‖ − 1\| = 0.01"):
        read_g2o(path)


def test_repository_datasets_read_without_a_warning():
    root = Path(__file__).resolve().parent.parent / "data"
    for path in sorted(root.glob("*.g2o")):
        read_quietly(path)


def test_psd_singular_information_is_accepted(write_file):
    text = "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nEDGE_SE2 0 1 1 0 0 1 1 0 1 0 0\n"
    g = read_quietly(write_file("p.g2o", text))  # eigenvalues 0, 2, 0
    assert torch.linalg.eigvalsh(g.information[0]).min() > -1e-12


def test_edge_only_file(write_file):
    text = "EDGE_SE2 7 3 1 0 0 1 0 0 1 0 1\nEDGE_SE2 3 5 1 0 0 1 0 0 1 0 1\n"
    g = read_quietly(write_file("e.g2o", text))
    assert g.poses is None and not g.has_poses and g.vertex_lines is None
    assert g.ids.tolist() == [3, 5, 7]  # sorted ids
    assert g.edges.tolist() == [[2, 0], [0, 1]]


def test_path_like_and_str(write_file):
    path = write_file("a.g2o", SE2_TEXT)
    assert read_quietly(str(path)).num_edges == read_quietly(path).num_edges == 3


# -- reading: errors name file and line ------------------------------------------------------------

V2 = "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\n"
E2 = "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n"
V3 = "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"

#: (name, content, expected line or None, words expected in the message)
BAD_FILES = [
    ("empty", "", None, ["no pose graph"]),
    ("only-comments", "# nothing\n\n   \n", None, ["no pose graph"]),
    ("token-count-vertex", "VERTEX_SE2 0 0 0\n", 1, ["expected 4", "received 3"]),
    ("token-count-edge", V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0\n", 3, ["expected 11", "received 10"]),
    ("token-count-se3", V3 + f"EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 {IDENTITY21} 5\n", 3, ["expected 30", "received 31"]),
    ("non-numeric", V2 + "EDGE_SE2 0 1 1 0 zero 1 0 0 1 0 1\n", 3, ["expected a number", "'zero'"]),
    ("non-integer-id", "VERTEX_SE2 1.5 0 0 0\n", 1, ["integer vertex id", "'1.5'"]),
    ("huge-id", "VERTEX_SE2 99999999999999999999999 0 0 0\n", 1, ["vertex id", "int64"]),
    ("nan", "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 nan 0 0\n" + E2, 2, ["finite", "'nan'"]),
    ("inf", V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 inf\n", 3, ["finite", "'inf'"]),
    ("overflow", V2 + "EDGE_SE2 0 1 1e999 0 0 1 0 0 1 0 1\n", 3, ["finite"]),
    ("zero-quaternion-vertex", "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 0 0 0 0 0 0 0\n"
     f"EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 {IDENTITY21}\n", 2, ["zero quaternion"]),
    ("zero-quaternion-edge", V3 + f"EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 0 {IDENTITY21}\n", 3, ["zero quaternion"]),
    ("not-psd", V2 + E2 + "EDGE_SE2 1 0 1 0 0 1 2 0 1 0 1\n", 4, ["positive semidefinite"]),
    ("not-psd-se3", V3 + "EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 " + IDENTITY21.replace("1", "-1", 1) + "\n", 3,
     ["positive semidefinite"]),
    ("unknown-vertex", V2 + "EDGE_SE2 0 5 1 0 0 1 0 0 1 0 1\n", 3, ["vertex 5"]),
    ("duplicate-vertex", V2 + "VERTEX_SE2 1 2 0 0\n" + E2, 3, ["duplicate vertex id 1", "line 2"]),
    ("self-loop", V2 + "EDGE_SE2 1 1 1 0 0 1 0 0 1 0 1\n", 3, ["self-loop"]),
    ("self-loop-edge-only", "EDGE_SE2 4 4 1 0 0 1 0 0 1 0 1\n", 1, ["self-loop"]),
    ("mixed", V2 + "VERTEX_SE3:QUAT 2 0 0 0 0 0 0 1\n", 3, ["mixing SE2 and SE3", "line 1"]),
    ("mixed-edge", V3 + E2, 3, ["mixing SE2 and SE3"]),
    ("fix-without-ids", V2 + E2 + "FIX\n", 4, ["FIX"]),
]


@pytest.mark.parametrize("name,content,line,words", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_errors(write_file, name, content, line, words):
    path = write_file(f"{name}.g2o", content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(G2oFormatError) as exc:
            read_g2o(path)
    err = exc.value
    assert err.path == str(path)
    assert err.line == line
    for w in words:
        assert w in err.message, (w, err.message)
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(err) == prefix + err.message
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    "content,line",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1),
        (b"VERTEX_SE2 0 0 0 0\n\x00\x01\x02\x03", 2),
        (SE2_TEXT.encode() + b"\xff\xfe garbage\n", 7),
    ],
    ids=["png", "nul", "bad-utf8"],
)
def test_binary_garbage(write_file, content, line):
    path = write_file("bin.g2o", content)
    with pytest.raises(G2oFormatError) as exc:
        read_g2o(path)
    assert exc.value.line == line and "not a g2o text file" in exc.value.message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(G2oFormatError) as exc:
        read_g2o(tmp_path / "nope.g2o")
    assert exc.value.path == str(tmp_path / "nope.g2o") and exc.value.line is None
    assert "no such file" in exc.value.message
    with pytest.raises(G2oFormatError) as exc:
        read_g2o(tmp_path)
    assert "directory" in exc.value.message


def test_vertices_without_edges_can_be_read(write_file):
    """Reading is fine (it is the optimization that refuses): no internal error."""
    for text in (V2, V3):
        g = read_quietly(write_file("v.g2o", text))
        assert g.num_poses == 2 and g.num_edges == 0
        assert g.information.shape == (0, g.dof, g.dof)


# -- writing ---------------------------------------------------------------------------------------


def assert_graphs_equal(a: PoseGraph, b: PoseGraph, tol: float = 1e-12) -> None:
    assert a.kind == b.kind
    assert torch.equal(a.ids, b.ids)
    assert torch.equal(a.edges, b.edges)
    assert torch.equal(a.fixed, b.fixed)
    for x, y in ((a.poses, b.poses), (a.measurements, b.measurements), (a.information, b.information)):
        if x is None or y is None:
            assert x is None and y is None
            continue
        assert x.dtype == y.dtype == torch.float64
        torch.testing.assert_close(x, y, atol=tol, rtol=0)


@pytest.mark.parametrize("kind", ["SE2", "SE3"])
def test_round_trip_exact(tmp_path, write_file, synthetic, kind):
    s = synthetic(kind=kind, n=7, loops=((0, 4), (6, 2)), ids=[5, 12, 3, 40, 41, 100, 7], seed=3, noise=0.05)
    rng = np.random.default_rng(1)
    init = s.truth @ np.stack([np.eye(s.truth.shape[1])] * 7)
    init[:, : s.truth.shape[1] - 1, -1] += rng.normal(size=(7, s.truth.shape[1] - 1))
    src = write_file("in.g2o", s.text(vertices=init, fixed=[40, 7]))
    a = read_quietly(src)
    assert a.fixed.tolist() == [False, False, False, True, False, False, True]
    out = tmp_path / "out.g2o"
    write_g2o(a, out)
    b = read_quietly(out)
    assert_graphs_equal(a, b)
    text = out.read_text()
    assert "FIX 40 7" in text
    vtag = "VERTEX_SE3:QUAT" if kind == "SE3" else "VERTEX_SE2"
    assert [int(l.split()[1]) for l in text.splitlines() if l.startswith(vtag)] == s.ids
    # a second round trip gives the same numbers (to the last few bits) and the same structure
    write_g2o(b, tmp_path / "out2.g2o")
    text2 = (tmp_path / "out2.g2o").read_text()
    for l1, l2 in zip(text.splitlines(), text2.splitlines(), strict=True):
        t1, t2 = l1.split(), l2.split()
        n_ids = 1 if t1[0].startswith("VERTEX") else len(t1) - 1 if t1[0] == "FIX" else 2
        assert t1[: 1 + n_ids] == t2[: 1 + n_ids]
        np.testing.assert_allclose(np.array(t1[1 + n_ids :], float), np.array(t2[1 + n_ids :], float), rtol=0, atol=1e-12)


def test_round_trip_edge_only_and_information(tmp_path, write_file, synthetic):
    s = synthetic(kind="SE3", n=5, loops=((0, 3),), seed=4)
    a = read_quietly(write_file("e.g2o", s.text(with_vertices=False)))
    np.testing.assert_allclose(a.information.numpy(), s.information, rtol=1e-15, atol=0)
    write_g2o(a, tmp_path / "o.g2o")
    b = read_quietly(tmp_path / "o.g2o")
    assert b.poses is None
    assert_graphs_equal(a, b)


def test_round_trip_float32_graph_is_written_in_float64(tmp_path, write_file, se3_text):
    a = read_quietly(write_file("a.g2o", se3_text))
    write_g2o(a.to(dtype=torch.float32), tmp_path / "o.g2o")
    b = read_quietly(tmp_path / "o.g2o")
    assert_graphs_equal(a, b, tol=1e-7)


def test_write_refuses_batched_graph(tmp_path, write_file, se2_text):
    a = read_quietly(write_file("a.g2o", se2_text))
    batched = a.with_poses(a.poses.expand(2, *a.poses.shape))
    with pytest.raises(ValueError):
        format_g2o(batched)
    assert not (tmp_path / "o.g2o").exists()


def test_written_poses_match_the_optimized_tensors(tmp_path, write_file, synthetic):
    s = synthetic(kind="SE3", n=4, loops=(), seed=2)
    a = read_quietly(write_file("a.g2o", s.text()))
    write_g2o(a, tmp_path / "o.g2o")
    b = read_quietly(tmp_path / "o.g2o")
    np.testing.assert_allclose(theseus_to_homogeneous("SE3", b.poses), s.truth, atol=1e-12)


# -- atomic writes ---------------------------------------------------------------------------------


@pytest.fixture
def graph_se2(write_file):
    return read_quietly(write_file("in.g2o", SE2_TEXT))


def _failing_fdopen(real_fdopen):
    """An ``os.fdopen`` whose file fails after writing part of the text."""

    class Half:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
            return False

        def write(self, text):
            self.fh.write(text[: len(text) // 2])
            self.fh.flush()
            raise OSError(28, "No space left on device")

    return lambda fd, *a, **k: Half(real_fdopen(fd, *a, **k))


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_mid_file_leaves_nothing(tmp_path, graph_se2, monkeypatch, leftovers, existing):
    target = tmp_path / "out" / "o.g2o"
    target.parent.mkdir()
    if existing:
        target.write_text("OLD CONTENT\n")
    monkeypatch.setattr(os, "fdopen", _failing_fdopen(os.fdopen))
    with pytest.raises(OSError):
        write_g2o(graph_se2, target)
    if existing:
        assert target.read_text() == "OLD CONTENT\n"
    else:
        assert not target.exists()
    assert leftovers(target.parent) == {}
    assert sorted(p.name for p in target.parent.iterdir()) == (["o.g2o"] if existing else [])


def test_failed_rename_leaves_nothing(tmp_path, graph_se2, monkeypatch, leftovers):
    target = tmp_path / "o.g2o"
    target.write_text("OLD\n")

    def boom(src, dst):
        raise OSError(5, "Input/output error", src, dst)  # as os.replace reports it

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError) as exc:
        write_g2o(graph_se2, target)
    assert target.read_text() == "OLD\n"
    assert leftovers(tmp_path) == {}
    assert exc.value.filename == str(target)  # names the target, not the temporary file


def test_interrupted_format_leaves_nothing(tmp_path, graph_se2, monkeypatch, leftovers):
    target = tmp_path / "o.g2o"

    def boom(graph):
        raise KeyboardInterrupt

    monkeypatch.setattr(g2o_write_mod, "format_g2o", boom)
    with pytest.raises(KeyboardInterrupt):
        write_g2o(graph_se2, target)
    assert not target.exists() and leftovers(tmp_path) == {}


def test_write_into_missing_folder_names_the_target(tmp_path, graph_se2):
    target = tmp_path / "missing" / "o.g2o"
    with pytest.raises(OSError) as exc:
        write_g2o(graph_se2, target)
    assert exc.value.filename == str(target)
    assert not (tmp_path / "missing").exists()


def test_successful_write_replaces_and_leaves_no_temp(tmp_path, graph_se2, leftovers):
    target = tmp_path / "o.g2o"
    target.write_text("OLD\n")
    write_g2o(graph_se2, target)
    assert target.read_text().startswith("VERTEX_SE2 0 ")
    assert leftovers(tmp_path) == {}


# -- 3D points (VERTEX_TRACKXYZ / EDGE_SE3_TRACKXYZ / PARAMS_SE3OFFSET) -------------------------------

POINTS_TEXT = (
    "PARAMS_SE3OFFSET 0 0 0 0 0 0 0 1\n"
    "PARAMS_SE3OFFSET 7 0.1 0 0.2 0 0 0.7071067811865476 0.7071067811865476\n"
    "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\n"
    "VERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"
    "VERTEX_TRACKXYZ 100 1 2 3\n"
    "VERTEX_TRACKXYZ 101 0 1 0\n"
    "FIX 0 101\n"
    f"EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 {IDENTITY21}\n"
    "EDGE_SE3_TRACKXYZ 0 100 0 1 2 3 4 0.5 0 4 0 4\n"
    "EDGE_SE3_TRACKXYZ 1 100 7 0 2 3 1 0 0 1 0 1\n"
    "EDGE_SE3_TRACKXYZ 1 101 0 -1 1 0 1 0 0 1 0 1\n"
)


def test_points_layout(write_file):
    g = read_quietly(write_file("p.g2o", POINTS_TEXT))
    lm = g.landmarks
    assert g.kind == "SE3" and g.num_poses == 2 and g.num_points == 2
    assert lm.ids.tolist() == [100, 101]
    assert lm.positions.tolist() == [[1, 2, 3], [0, 1, 0]]
    assert lm.observations.tolist() == [[0, 0], [1, 0], [1, 1]]
    assert lm.offset_ids.tolist() == [0, 7, 0]
    assert lm.fixed.tolist() == [False, True] and g.fixed.tolist() == [True, False]
    assert lm.observation_lines == [9, 10, 11] and lm.vertex_lines == [5, 6]
    info0 = torch.tensor([[4, 0.5, 0], [0.5, 4, 0], [0, 0, 4]], dtype=torch.float64)
    assert torch.equal(lm.information[0], info0)
    # offset 7: translation (0.1, 0, 0.2), 90° about z
    expected = torch.tensor([[0.0, -1, 0, 0.1], [1, 0, 0, 0], [0, 0, 1, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(lm.offsets[1], expected, atol=1e-15, rtol=0)
    torch.testing.assert_close(lm.offsets[0], torch.eye(3, 4, dtype=torch.float64))


def test_points_round_trip_exact(write_file, tmp_path):
    g = read_quietly(write_file("p.g2o", POINTS_TEXT))
    out = tmp_path / "out.g2o"
    write_g2o(g, out)
    h = read_quietly(out)
    for name in ("ids", "positions", "observations", "measurements", "information", "offset_ids", "fixed"):
        assert torch.equal(getattr(g.landmarks, name), getattr(h.landmarks, name)), name
    # rotation → quaternion → rotation: exact up to the last bit
    torch.testing.assert_close(g.landmarks.offsets, h.landmarks.offsets, atol=1e-15, rtol=0)
    assert torch.equal(g.poses, h.poses) and torch.equal(g.fixed, h.fixed)


def test_points_edge_only_file(write_file):
    text = "".join(line + "\n" for line in POINTS_TEXT.splitlines() if not line.startswith("VERTEX"))
    g = read_quietly(write_file("e.g2o", text.replace("FIX 0 101", "FIX 0")))
    assert g.poses is None and g.landmarks.positions is None
    assert g.ids.tolist() == [0, 1] and g.landmarks.ids.tolist() == [100, 101]
    assert "VERTEX" not in format_g2o(g)


POINT_BAD = [
    ("se2-file", "VERTEX_SE2 0 0 0 0\nVERTEX_TRACKXYZ 5 1 2 3\n", 2, ["SE3 poses", "SE2"]),
    ("points-only", "VERTEX_TRACKXYZ 5 1 2 3\n", 1, ["no SE3 poses"]),
    ("count", POINTS_TEXT.replace("VERTEX_TRACKXYZ 100 1 2 3", "VERTEX_TRACKXYZ 100 1 2"), 5, ["expected 4", "received 3"]),
    ("id-clash", POINTS_TEXT.replace("VERTEX_TRACKXYZ 100", "VERTEX_TRACKXYZ 1"), 5, ["duplicate vertex id 1"]),
    ("unknown-point", POINTS_TEXT.replace("EDGE_SE3_TRACKXYZ 1 101", "EDGE_SE3_TRACKXYZ 1 102"), 11, ["vertex 102", "VERTEX_TRACKXYZ"]),
    ("point-as-pose", POINTS_TEXT.replace("EDGE_SE3_TRACKXYZ 1 101", "EDGE_SE3_TRACKXYZ 100 101"), 11, ["100", "3D point", "expected a pose"]),
    ("pose-as-point", POINTS_TEXT.replace("EDGE_SE3_TRACKXYZ 1 101", "EDGE_SE3_TRACKXYZ 1 0"), 11, ["vertex 0", "a pose"]),
    ("no-param", POINTS_TEXT.replace("EDGE_SE3_TRACKXYZ 1 100 7", "EDGE_SE3_TRACKXYZ 1 100 3"), 10, ["parameter 3", "PARAMS_SE3OFFSET"]),
    ("dup-param", "PARAMS_SE3OFFSET 0 0 0 0 0 0 0 1\n" + POINTS_TEXT, 2, ["duplicate parameter id 0"]),
    ("point-info-not-psd", POINTS_TEXT.replace("4 0.5 0 4 0 4", "4 0.5 0 -4 0 4"), 9, ["positive semidefinite"]),
    ("fix-unknown", POINTS_TEXT.replace("FIX 0 101", "FIX 0 555"), 7, ["unknown vertex 555"]),
]


@pytest.mark.parametrize("name,text,line,words", POINT_BAD, ids=[b[0] for b in POINT_BAD])
def test_points_bad_input(write_file, name, text, line, words):
    path = write_file(f"{name}.g2o", text)
    with pytest.raises(G2oFormatError) as exc:
        read_g2o(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    for w in words:
        assert w in msg, (w, msg)


# -- the bulk parser gives the reference parser's graphs and errors --------------------------------

DATA = Path(__file__).resolve().parents[2] / "data"


def read_reference(path):
    """read_g2o through the line-by-line reference parser only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(g2o_mod, "_parse_bulk", lambda path, text: None)
        return read_g2o(path)


def outcome(read, path):
    """('ok', graph, warnings) or ('error', message, line) of one read."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            graph = read(path)
        except G2oFormatError as err:
            return ("error", str(err), err.line)
    return ("ok", graph, [str(w.message) for w in caught])


def assert_identical(a, b) -> None:
    """Same fields; tensors equal exactly, with the same dtypes; line lists equal as lists."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y), f.name
        elif dataclasses.is_dataclass(x):
            assert_identical(x, y)
        else:
            assert type(x) is type(y) and x == y, f.name
            if isinstance(x, list):
                assert all(type(v) is int for v in x), f.name


def assert_same_outcome(path, bulk_used=None) -> None:
    """read_g2o (bulk first) and the reference parser agree; ``bulk_used``: whether the bulk
    parser must have accepted (True) or given up on (False) the file."""
    fast, ref = outcome(read_g2o, path), outcome(read_reference, path)
    assert fast[0] == ref[0], (fast, ref)
    if fast[0] == "error":
        assert fast[1:] == ref[1:]
    else:
        assert_identical(fast[1], ref[1])
        assert fast[2] == ref[2]
    if bulk_used is not None:
        text = Path(path).read_bytes().decode("utf-8")
        assert (g2o_mod._parse_bulk(str(path), text) is not None) == bulk_used


@pytest.mark.parametrize(
    "name", ["parking-garage", "sphere2500", "manhattan", "smallGrid3D", "tinyGrid3D", "intel"]
)
def test_bulk_parser_matches_reference_on_datasets(datasets_dir, name):
    path = datasets_dir / f"{name}.g2o"
    if not path.exists():
        pytest.skip(f"{path} not found")
    assert_same_outcome(path, bulk_used=True)


@pytest.mark.parametrize(
    "name", ["parking-garage", "sphere2500", "manhattan", "smallGrid3D", "tinyGrid3D", "intel"]
)
def test_public_datasets_read_without_a_warning(datasets_dir, name):
    """Their quaternions (6 significant digits, or 7 decimals) are within the precision of their
    printed digits: the rotation rule uses them as given (posegraph.lie.printed_precision)."""
    path = datasets_dir / f"{name}.g2o"
    if not path.exists():
        pytest.skip(f"{path} not found")
    read_quietly(path)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.g2o")))
def test_bulk_parser_matches_reference_on_data_files(name):
    assert_same_outcome(DATA / name, bulk_used=True)


def test_bulk_parser_matches_reference_with_points(write_file):
    assert_same_outcome(write_file("p.g2o", POINTS_TEXT), bulk_used=True)


E3 = f"EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 {IDENTITY21}\n"
#: (name, content, expected line (None: no error), whether the bulk parser handles it)
BULK_CASES = [
    ("count-vertex", V2 + "VERTEX_SE2 2 0 0\n" + E2, 3, False),
    ("count-edge", V2 + E2 + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1 7\n", 4, False),
    ("tag-alone", V2 + "EDGE_SE2\n" + E2, 3, False),
    ("float-id", V2 + "EDGE_SE2 0 1.0 1 0 0 1 0 0 1 0 1\n", 3, False),
    ("exponent-id", V2 + "EDGE_SE2 0 1e0 1 0 0 1 0 0 1 0 1\n", 3, False),
    ("huge-id", V2 + E2 + "VERTEX_SE2 9223372036854775808 0 0 0\n", 4, False),
    ("max-id", V2 + "VERTEX_SE2 9223372036854775807 0 0 0\n" + E2, None, True),
    ("underscore-id", "VERTEX_SE2 1_0 0 0 0\nVERTEX_SE2 1 0 0 0\nEDGE_SE2 10 1 1 0 0 1 0 0 1 0 1\n",
     None, False),
    ("nan", V2 + "EDGE_SE2 0 1 1 nan 0 1 0 0 1 0 1\n", 3, False),
    ("inf-vertex", V2.replace("1 1 0 0", "1 -inf 0 0") + E2, 2, False),
    ("hex", V2 + "EDGE_SE2 0 1 0x1 0 0 1 0 0 1 0 1\n", 3, False),
    ("decimal-comma", V2 + "EDGE_SE2 0 1 1,0 0 0 1 0 0 1 0 1\n", 3, False),
    ("quoted", V2 + 'EDGE_SE2 0 1 "1" 0 0 1 0 0 1 0 1\n', 3, False),
    ("arabic-digit", V2 + "EDGE_SE2 0 1 \u0661 0 0 1 0 0 1 0 1\n", None, False),
    ("nbsp", V2 + "EDGE_SE2 0 1\u00a01 0 0 1 0 0 1 0 1\n", None, True),
    ("self-loop", V2 + E2 + "EDGE_SE2 1 1 1 0 0 1 0 0 1 0 1\n", 4, False),
    ("mixed", V2 + E2 + E3, 4, False),
    ("mixed-vertex-first", V3 + V2.replace("0 0 0 0", "7 0 0 0", 1) + E3, 3, False),
    ("bad-fix-then-bad-edge", V2 + "FIX\n" + "EDGE_SE2 0 1 1 0\n", 3, False),
    ("bad-edge-then-bad-fix", V2 + "EDGE_SE2 0 1 1 0\n" + "FIX x\n", 3, False),
    ("bad-point-then-bad-edge", V3 + "VERTEX_TRACKXYZ 5 1 2\n" + "EDGE_SE3:QUAT 0 1\n", 3, False),
    ("comment-on-edge", V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1 # odometry\n", None, True),
    ("comment-cuts-values", V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 1 # 0 1\n", 3, False),
    ("crlf-tabs", V2.replace("\n", "\r\n").replace(" ", "\t") + "  EDGE_SE2 \t0 1 1 0 0 1 0 0 1 0 1\t\r\n",
     None, True),
    ("no-final-newline", V2 + E2.rstrip("\n"), None, True),
    ("unknown-tags", "FOO 1\n" + V2 + "BAR\nFOO 2 3\n" + E2, None, True),
    ("quaternion-far", V3.replace("0 0 0 1\nV", "0 0 0 2\nV", 1) + E3, None, True),
    ("fix", V2 + "FIX 1 0\n" + E2, None, True),
    # errors of the assembly (shared by both parsers): first offending line in file order
    ("duplicates", V2 + "VERTEX_SE2 7 0 0 0\nVERTEX_SE2 7 0 0 0\nVERTEX_SE2 0 0 0 0\n" + E2, 4, True),
    ("unknown-b-then-a", V2 + "EDGE_SE2 0 9 1 0 0 1 0 0 1 0 1\nEDGE_SE2 8 1 1 0 0 1 0 0 1 0 1\n", 3, True),
    ("unknown-a", V2 + E2 + "EDGE_SE2 8 9 1 0 0 1 0 0 1 0 1\n", 4, True),
    ("fix-unknown", V2 + "FIX 0 77 1 78\n" + E2, 3, True),
    ("edge-only", "EDGE_SE2 5 -3 1 0 0 1 0 0 1 0 1\nFIX -3\nEDGE_SE2 9 5 1 0 0 1 0 0 1 0 1\n", None, True),
    ("edge-only-fix-unknown", "EDGE_SE2 5 -3 1 0 0 1 0 0 1 0 1\nFIX 4\n", 2, True),
    ("not-psd-and-not-number", V2 + "EDGE_SE2 1 0 1 0 0 1 2 0 1 0 1\nEDGE_SE2 0 1 1 0 x 1 0 0 1 0 1\n", 4, False),
]


@pytest.mark.parametrize("name,content,line,bulk", BULK_CASES, ids=[c[0] for c in BULK_CASES])
def test_bulk_parser_matches_reference_on_odd_files(write_file, name, content, line, bulk):
    path = write_file(f"{name}.g2o", content)
    assert_same_outcome(path, bulk_used=bulk)
    result = outcome(read_g2o, path)
    assert result[0] == ("ok" if line is None else "error"), result
    if line is not None:
        assert result[2] == line, result


def test_assembly_errors_name_the_first_offending_line(write_file):
    """The vectorized checks word their errors as the per-line ones did."""
    cases = [
        ("duplicates", "duplicate vertex id 7 (first defined on line 3)"),
        ("unknown-b-then-a", "edge refers to vertex 9, which has no VERTEX line"),
        ("unknown-a", "edge refers to vertex 8, which has no VERTEX line"),
        ("fix-unknown", "FIX refers to unknown vertex 77"),
        ("edge-only-fix-unknown", "FIX refers to unknown vertex 4"),
        ("not-psd-and-not-number", "EDGE_SE2: expected a number, received 'x'"),
    ]
    contents = {c[0]: (c[1], c[2]) for c in BULK_CASES}
    for name, message in cases:
        content, line = contents[name]
        path = write_file(f"{name}.g2o", content)
        with pytest.raises(G2oFormatError) as exc:
            read_g2o(path)
        assert str(exc.value) == f"{path}:{line}: {message}"


def test_check_information_cholesky_shortcut_agrees_with_eigenvalues():
    """PD batches are accepted by the Cholesky test alone; PSD-singular and slightly negative
    (within PSD_TOLERANCE) matrices fall back to eigenvalues and are accepted too; a clearly
    indefinite matrix is named by its line."""
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(5, 6, 6)))[0]
    lam = rng.uniform(1, 10, size=(5, 6))
    lam[1, 0] = 0.0  # singular PSD
    lam[2, 0] = -1e-12  # round-off sized negative: accepted
    info = (q * lam[:, None, :]) @ q.transpose(0, 2, 1)
    info = (info + info.transpose(0, 2, 1)) / 2
    lines = [10, 11, 12, 13, 14]
    g2o_mod.check_information(info[[0, 3, 4]], "f.g2o", lines)
    g2o_mod.check_information(info, "f.g2o", lines)
    info[3] -= (lam[3, 0] + 1e-3) * np.outer(q[3][:, 0], q[3][:, 0])  # λ_min = −1e-3
    with pytest.raises(G2oFormatError) as exc:
        g2o_mod.check_information(info, "f.g2o", lines)
    assert exc.value.line == 13 and "positive semidefinite" in exc.value.message


# -- information matrices: counted refusal, repair, magnitude bound ------------------------------------


def _indefinite_se3_text(synthetic_graph, fraction, seed=0):
    """g2o text of ``synthetic_graph`` with ``fraction`` of its information made indefinite
    (posegraph.synthetic.hard_cases), and the mask of those edges."""
    from posegraph.synthetic.hard_cases import with_indefinite_information

    bad = with_indefinite_information(synthetic_graph, fraction, seed=seed)
    return format_g2o(bad), bad.extras["indefinite"]


@pytest.fixture
def small_sphere():
    from posegraph.synthetic.graphs import sphere_se3

    return sphere_se3(num_rings=3, poses_per_ring=8, seed=3).graph


def test_not_psd_refusal_counts_the_whole_file(write_file, small_sphere):
    text, mask = _indefinite_se3_text(small_sphere, 0.3)
    path = write_file("indef.g2o", text)
    with pytest.raises(G2oFormatError) as exc:
        read_g2o(path)
    first = int(np.flatnonzero(mask.numpy())[0])
    edge_lines = [k + 1 for k, line in enumerate(text.splitlines()) if line.startswith("EDGE")]
    lam = np.linalg.eigvalsh(raw_information(text)[first])
    err = exc.value
    assert err.path == str(path) and err.line == edge_lines[first]
    assert err.message == (
        f"{int(mask.sum())} of {small_sphere.num_edges} EDGE_SE3:QUAT information matrices are not "
        f"positive semidefinite (expected eigenvalues ≥ 0; first at line {edge_lines[first]}, "
        f"smallest eigenvalue {lam[0]:.3g}); --repair-information (Python: read_g2o(..., "
        "repair_information=True)) clips their negative eigenvalues"
    )
    assert str(err) == f"{path}:{edge_lines[first]}: {err.message}"


def raw_information(text):
    """The information matrices of g2o ``text`` as written, without any check (numpy)."""
    rows = [line.split() for line in text.splitlines() if line.startswith("EDGE_SE3:QUAT")]
    upper = np.array([[float(v) for v in row[10:]] for row in rows])
    return g2o_mod._upper_to_symmetric(upper, 6)


def test_repair_equals_numpy_eigenvalue_clipping_and_warns_once(write_file, small_sphere):
    text, mask = _indefinite_se3_text(small_sphere, 0.3)
    path = write_file("indef.g2o", text)
    raw = raw_information(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = read_g2o(path, repair_information=True)
    assert [str(w.message) for w in caught] == [
        f"{path}: {int(mask.sum())} of {small_sphere.num_edges} information matrices were not "
        "positive semidefinite; each was replaced by its nearest positive semidefinite matrix "
        "(negative eigenvalues clipped to 0)"
    ]
    assert g.extras["repaired_information"] == int(mask.sum()) > 0
    lam, vec = np.linalg.eigh(raw)
    clipped = np.einsum("eij,ej,ekj->eik", vec, np.clip(lam, 0, None), vec)
    bad = mask.numpy()
    np.testing.assert_allclose(g.information.numpy()[bad], clipped[bad], rtol=0, atol=1e-10 * np.abs(raw).max())
    assert np.array_equal(g.information.numpy()[~bad], raw[~bad])  # the others untouched
    assert np.linalg.eigvalsh(g.information.numpy())[:, 0].min() > -1e-9 * np.abs(raw).max()


def test_repair_flag_on_a_clean_file_changes_nothing(write_file):
    path = write_file("a.g2o", SE2_TEXT)
    g = read_quietly(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair: no warning
        r = read_g2o(path, repair_information=True)
    assert r.extras == {"repaired_information": 0} and "repaired_information" not in g.extras
    assert torch.equal(r.information, g.information)


def test_repair_of_point_observation_information(write_file):
    text = POINTS_TEXT.replace("4 0.5 0 4 0 4", "4 0.5 0 -4 0 4")
    path = write_file("p.g2o", text)
    with pytest.warns(UserWarning, match="1 of 4 information matrices"):
        g = read_g2o(path, repair_information=True)
    assert g.extras["repaired_information"] == 1
    raw = np.array([[4, 0.5, 0], [0.5, -4, 0], [0, 0, 4]], dtype=float)
    lam, vec = np.linalg.eigh(raw)
    np.testing.assert_allclose(g.landmarks.information[0].numpy(), (vec * np.clip(lam, 0, None)) @ vec.T, atol=1e-14)


#: information beyond ±1e150: a format error on the line, naming the edge (issue: eigh failed later)
HUGE_INFORMATION = [
    ("se2-diagonal", V2 + "EDGE_SE2 0 1 1 0 0 1e308 0 0 1e308 0 1e308\n", 3, "EDGE_SE2 0 1", (0, 0), "1e+308"),
    ("se2-all-equal", V2 + "EDGE_SE2 0 1 1 0 0 1e308 1e308 1e308 1e308 1e308 1e308\n", 3, "EDGE_SE2 0 1", (0, 0), "1e+308"),
    ("se2-off-diagonal", V2 + E2 + "EDGE_SE2 1 0 1 0 0 1 -2e150 0 1 0 1\n", 4, "EDGE_SE2 1 0", (0, 1), "-2e+150"),
    ("se3", V3 + "EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 " + IDENTITY21.replace("1", "1e200", 2) + "\n", 3,
     "EDGE_SE3:QUAT 0 1", (0, 0), "1e+200"),
    ("point", POINTS_TEXT.replace("EDGE_SE3_TRACKXYZ 1 101 0 -1 1 0 1 0 0 1", "EDGE_SE3_TRACKXYZ 1 101 0 -1 1 0 1 0 0 1e160"),
     11, "EDGE_SE3_TRACKXYZ 1 101", (1, 1), "1e+160"),
]


@pytest.mark.parametrize("name,text,line,edge,at,value", HUGE_INFORMATION, ids=[h[0] for h in HUGE_INFORMATION])
@pytest.mark.parametrize("repair", [False, True])
def test_information_beyond_the_bound_is_a_format_error(write_file, name, text, line, edge, at, value, repair):
    path = write_file(f"{name}.g2o", text)
    with pytest.raises(G2oFormatError) as exc:
        read_g2o(path, repair_information=repair)
    assert str(exc.value) == (
        f"{path}:{line}: {edge}: information entry (row {at[0]}, column {at[1]}) is {value}; "
        "expected a magnitude ≤ 1e+150 (larger information overflows the cost and its normal equations)"
    )


def test_information_at_the_bound_is_accepted(write_file):
    path = write_file("edge.g2o", V2 + "EDGE_SE2 0 1 1 0 0 1e150 0 0 1e150 0 1e150\n")
    assert float(read_quietly(path).information.max()) == 1e150


# -- lines, byte order mark, huge ids, long tokens ---------------------------------------------

#: characters Python's str.splitlines breaks at besides "\n": whitespace inside a g2o line
NOT_LINE_BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]
HUGE = "1" * 5000  # more digits than int() converts (4300)
ODD_LINE_CASES = [
    # a comment runs to "\n": the vertex after the character stays commented out, and the
    # bad edge is on line 5 (not 6)
    *[(f"comment-{ord(c):x}", V2 + f"# note{c}VERTEX_SE2 9 0 0 0\n" + E2 + "EDGE_SE2 0 1 x\n", 5, False)
      for c in NOT_LINE_BREAKS],
    # inside a data line the character separates tokens: one line of 8 values
    *[(f"data-{ord(c):x}", V2 + f"VERTEX_SE2 2 0 0 0{c}VERTEX_SE2 3 0 0 0\n" + E2, 3, False)
      for c in NOT_LINE_BREAKS],
    ("bom", "\ufeff" + V2 + E2, None, True),
    ("bom-crlf", "\ufeff" + (V2 + E2).replace("\n", "\r\n"), None, True),
    ("bom-then-bad-edge", "\ufeff" + V2 + "EDGE_SE2 0 1 x 0 0 1 0 0 1 0 1\n", 3, False),
    ("bom-not-at-start", V2 + "\ufeff" + E2, None, True),  # an unknown tag there (a warning)
    ("huge-vertex-id", V2 + E2 + f"VERTEX_SE2 {HUGE} 0 0 0\n", 4, False),
    ("huge-negative-edge-id", V2 + f"EDGE_SE2 0 -{HUGE} 1 0 0 1 0 0 1 0 1\n", 3, False),
    ("huge-fix-id", V2 + E2 + f"FIX {HUGE}\n", 4, False),
    ("huge-point-id", V3 + f"VERTEX_TRACKXYZ {HUGE} 1 2 3\n" + E3, 3, False),
    ("huge-id-leading-zeros", V2.replace("VERTEX_SE2 1 ", f"VERTEX_SE2 {'0' * 5000}1 ") + E2, None, True),
    ("huge-value", V2 + f"EDGE_SE2 0 1 {'9' * 400} 0 0 1 0 0 1 0 1\n", 3, False),
]


@pytest.mark.parametrize("name,content,line,bulk", ODD_LINE_CASES, ids=[c[0] for c in ODD_LINE_CASES])
def test_lines_bom_and_huge_ids_same_in_both_parsers(write_file, name, content, line, bulk):
    """Both parsers split lines at "\\n" only, skip a leading BOM and refuse ids of thousands of
    digits as out of range, naming the same line."""
    test_bulk_parser_matches_reference_on_odd_files(write_file, name, content, line, bulk)


def test_comment_ends_only_at_newline(write_file):
    path = write_file("c.g2o", V2 + "# a\x0cVERTEX_SE2 9 0 0 0\u2028VERTEX_SE2 10 0 0 0\n" + E2)
    assert read_g2o(path).ids.tolist() == [0, 1]


def test_bom_is_skipped_without_a_warning(write_file):
    path = write_file("bom.g2o", "\ufeff" + V2 + E2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = read_g2o(path)
    assert g.ids.tolist() == [0, 1] and g.vertex_lines == [1, 2]


@pytest.mark.parametrize("sign", ["", "-", "+"])
def test_huge_id_is_an_out_of_range_format_error(write_file, sign):
    path = write_file("h.g2o", V2 + f"EDGE_SE2 0 {sign}{HUGE} 1 0 0 1 0 0 1 0 1\n")
    with pytest.raises(G2oFormatError) as exc:
        read_g2o(path)
    assert exc.value.line == 3 and str(path) in str(exc.value)
    assert "expected a vertex id in" in exc.value.message and "int64" in exc.value.message
    assert "(5001 characters)" in exc.value.message if sign else "(5000 characters)" in exc.value.message


@pytest.mark.parametrize(
    "line,what",
    [
        (f"VERTEX_SE2 1 {'x' * 10**6} 0 0", "expected a number"),
        (f"VERTEX_SE2 {'y' * 10**6} 0 0 0", "expected an integer vertex id"),
        (f"VERTEX_SE2 1 {'1' * 10**6} 0 0", "expected a finite number"),
        (f"FIX {'z' * 10**6}", "expected an integer vertex id"),
    ],
    ids=["value", "id", "overflow", "fix"],
)
def test_long_tokens_are_cut_in_errors(write_file, line, what):
    path = write_file("long.g2o", "VERTEX_SE2 0 0 0 0\n" + line + "\n" + E2)
    with pytest.raises(G2oFormatError) as exc:
        read_g2o(path)
    message = str(exc.value)
    assert exc.value.line == 2 and what in message
    assert len(message) < len(str(path)) + 250, len(message)
    assert "…" in message and "(1000000 characters)" in message


def test_long_unknown_tag_is_cut_in_its_warning(write_file):
    path = write_file("tag.g2o", "T" * 10**5 + " 1\n" + V2 + E2)
    with pytest.warns(UserWarning) as record:
        read_g2o(path)
    (message,) = [str(w.message) for w in record if "unsupported tag" in str(w.message)]
    assert len(message) < len(str(path)) + 200 and "(100000 characters)" in message
