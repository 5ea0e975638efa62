"""``posegraph plot``: images written, of the requested size, with something drawn on them."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib.image as mpimg  # noqa: E402

from posegraph import read_g2o  # noqa: E402
from posegraph.cli.optimize import EXIT_BAD_INPUT  # noqa: E402
from posegraph.cli.main import main
from posegraph.errors import PoseGraphError  # noqa: E402
from posegraph.report.plot import PANEL_SIZE, plot_files, plot_graphs  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"


def _image(path: Path) -> np.ndarray:
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img[..., :3]


def _assert_drawn(img: np.ndarray, color=None) -> None:
    """Non-trivial: many pixels that are not background, many distinct colors; ``color``
    (RGB 0..1) present when given."""
    non_white = (img < 0.95).any(axis=2).mean()
    assert 0.01 < non_white < 0.9, non_white
    assert len(np.unique(img.reshape(-1, 3).round(2), axis=0)) > 20
    if color is not None:
        close = (np.abs(img - np.asarray(color)) < 0.08).all(axis=2)
        assert close.sum() > 100, close.sum()


ODOMETRY_RGB = (0x1F / 255, 0x3B / 255, 0x73 / 255)


def _trace(tmp_path: Path) -> Path:
    trace = tmp_path / "trace.json"
    trace.write_text('{"iterations": [{"iteration": 0, "error": 1000.0}, {"iteration": 1, "error": 10.0},'
                     ' {"iteration": 2, "error": 5.0}, {"iteration": 3, "error": "nan"}], "first_nonfinite": null}\n')
    return trace


def test_se2_before_after_with_history(tmp_path, capsys):
    out = tmp_path / "grid.png"
    # the ground truth stands in for an optimized file: two panels and the history
    code = main(["plot", str(DATA / "grid_se2.g2o"), str(DATA / "grid_se2.gt.g2o"), "-o", str(out),
                 "--trace", str(_trace(tmp_path)), "--size", "1200x500"])
    assert code == 0 and capsys.readouterr() == ("", "")
    img = _image(out)
    assert img.shape[:2] == (500, 1200)
    _assert_drawn(img, ODOMETRY_RGB)
    # the left half (before, drifted) and the middle (truth) differ
    assert not np.allclose(img[:, :400], img[:, 400:800])


def test_se3_orthographic_views_default_size(tmp_path):
    out = tmp_path / "sphere.png"
    size = plot_files(str(DATA / "sphere_se3.g2o"), str(DATA / "sphere_se3.gt.g2o"), str(out))
    cols, rows = 3, 2  # XY, XZ, YZ × before, after
    assert size == (PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + 40)
    img = _image(out)
    assert img.shape[:2] == (size[1], size[0])
    _assert_drawn(img, ODOMETRY_RGB)


def test_vertex_only_and_edge_only_files(tmp_path):
    traj = tmp_path / "traj.g2o"
    traj.write_text("".join(l for l in (DATA / "sphere_se3.gt.g2o").read_text().splitlines(True) if l.startswith("VERTEX")))
    out = tmp_path / "traj.png"
    assert plot_files(str(traj), None, str(out), size=(900, 400), dpi=80) == (900, 400)
    img = _image(out)
    assert img.shape[:2] == (400, 900)
    _assert_drawn(img, ODOMETRY_RGB)
    out2 = tmp_path / "edges.png"
    plot_files(str(DATA / "grid_se2_edges_only.g2o"), None, str(out2))  # drawn at its spanning-tree guess
    _assert_drawn(_image(out2), ODOMETRY_RGB)


def test_bad_inputs(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["plot", str(DATA / "grid_se2.g2o"), str(DATA / "sphere_se3.g2o"), "-o", str(out)]) == EXIT_BAD_INPUT
    _, err = capsys.readouterr()
    assert err.startswith("error: ") and "expected graphs of one kind, received SE2, SE3" in err
    assert main(["plot", str(DATA / "grid_se2.g2o"), "-o", str(tmp_path / "x.nope")]) == EXIT_BAD_INPUT
    _, err = capsys.readouterr()
    assert err.startswith(f"error: {tmp_path / 'x.nope'}: cannot write the figure") and err.count("\n") == 1
    assert main(["plot", str(DATA / "grid_se2.g2o"), "-o", str(out), "--trace", str(tmp_path / "none.json")]) == EXIT_BAD_INPUT
    _, err = capsys.readouterr()
    assert err == f"error: {tmp_path / 'none.json'}: no such trace file\n"
    with pytest.raises(SystemExit):
        main(["plot", str(DATA / "grid_se2.g2o"), "-o", str(out), "--size", "12"])
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err
    assert not out.exists()


def test_output_that_is_an_input_is_refused(tmp_path, capsys):
    path = tmp_path / "a.g2o"
    path.write_text((DATA / "grid_se2.g2o").read_text())
    assert main(["plot", str(path), "-o", str(path)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith(f"error: {path}: is the input file {path}; refusing to overwrite it")
    assert path.read_text() == (DATA / "grid_se2.g2o").read_text()


def test_figure_through_a_symlink_keeps_the_link(tmp_path):
    target, link = tmp_path / "fig.png", tmp_path / "link.png"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link.symlink_to(target)
    assert main(["plot", str(DATA / "grid_se2.g2o"), "-o", str(link)]) == 0
    assert link.is_symlink() and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["fig.png", "link.png"]


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PoseGraphError, match=r"needs matplotlib.*pip install 'posegraph\[plot\]'"):
        plot_graphs([read_g2o(DATA / "grid_se2.g2o")], str(tmp_path / "x.png"))


def test_tum_and_kitti_trajectories_are_drawn(tmp_path, capsys):
    from posegraph.io import Trajectory, write_trajectory

    traj = Trajectory.from_graph(read_g2o(DATA / "sphere_se3.gt.g2o"))
    write_trajectory(traj, tmp_path / "gt.tum")
    write_trajectory(traj, tmp_path / "gt.kitti")
    (tmp_path / "poses.txt").write_text((tmp_path / "gt.kitti").read_text())  # .txt: KITTI by its 12 columns
    out = tmp_path / "t.png"
    assert plot_files(str(tmp_path / "gt.tum"), str(tmp_path / "poses.txt"), str(out), size=(900, 600)) == (900, 600)
    _assert_drawn(_image(out), ODOMETRY_RGB)
    (tmp_path / "gt.dat").write_text((tmp_path / "gt.tum").read_text())
    assert main(["plot", str(tmp_path / "gt.dat"), "--format", "tum", "-o", str(tmp_path / "d.png")]) == 0
    _assert_drawn(_image(tmp_path / "d.png"), ODOMETRY_RGB)
    assert main(["plot", str(tmp_path / "gt.dat"), "-o", str(tmp_path / "e.png")]) == EXIT_BAD_INPUT  # read as g2o
    assert "no pose graph found" in capsys.readouterr().err and not (tmp_path / "e.png").exists()
