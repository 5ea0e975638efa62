"""posegraph.io.output: inputs never overwritten by accident, atomic replacement through
symlinks, special files in place, modes, temporary files, errors naming the file."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import posegraph.io.output as output_mod
from posegraph import read_g2o, write_g2o
from posegraph.cli.optimize import EXIT_BAD_INPUT
from posegraph.cli.main import main
from posegraph.errors import PoseGraphError
from posegraph.io.output import TEMP_MARK, OutputError, check_outputs, write_output, write_text_atomic

from conftest import REPO, SE2_TEXT

GRID = REPO / "data" / "grid_se2.g2o"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _char_device(path: Path, name: str) -> Path:
    """A copy of /dev/null or /dev/full at ``path`` (skips where making devices is not allowed)."""
    minor = {"null": 3, "full": 7}[name]
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except (PermissionError, AttributeError):
        pytest.skip("making a device file needs root")
    return path


@pytest.fixture
def umask():
    """Set the process's umask for a test, restored after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


# -- modes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_new_file_mode_is_0666_minus_umask(tmp_path, umask, mask, expected):
    umask(mask)
    target = tmp_path / "o.g2o"
    write_text_atomic(target, "x\n")
    assert _mode(target) == expected and target.read_text() == "x\n"


def test_replaced_file_keeps_its_mode(tmp_path, umask, leftovers):
    umask(0o022)
    target = tmp_path / "o.g2o"
    target.write_text("old\n")
    os.chmod(target, 0o604)
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n" and _mode(target) == 0o604 and leftovers(tmp_path) == {}


def test_read_only_file(tmp_path, leftovers):
    """A 0444 file is replaced with its mode kept where its user may write it (root), and
    refused with "Permission denied" otherwise; either way nothing else changes."""
    target = tmp_path / "o.g2o"
    target.write_text("old\n")
    os.chmod(target, 0o444)
    if os.access(target, os.W_OK):
        write_text_atomic(target, "new\n")
        assert target.read_text() == "new\n" and _mode(target) == 0o444
    else:
        with pytest.raises(OutputError, match="Permission denied"):
            write_text_atomic(target, "new\n")
        assert target.read_text() == "old\n"
    assert leftovers(tmp_path) == {}


def test_file_its_user_may_not_write_is_refused(tmp_path, monkeypatch, leftovers):
    target = tmp_path / "o.g2o"
    target.write_text("old\n")
    os.chmod(target, 0o444)
    real_access = os.access
    monkeypatch.setattr(output_mod.os, "access", lambda p, mode, **kw: os.fspath(p) != str(target) and real_access(p, mode, **kw))
    with pytest.raises(OutputError) as exc:
        write_text_atomic(target, "new\n")
    assert str(exc.value) == f"{target}: Permission denied (read-only file)"
    assert exc.value.errno == errno.EACCES and exc.value.filename == str(target)
    assert target.read_text() == "old\n" and _mode(target) == 0o444 and leftovers(tmp_path) == {}


# -- symlinks -----------------------------------------------------------------------------------
def test_symlink_stays_a_link_and_its_target_is_replaced(tmp_path, leftovers):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "o.g2o"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    link = tmp_path / "link.g2o"
    link.symlink_to(target)
    inode = os.stat(target).st_ino
    write_text_atomic(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n" and _mode(target) == 0o640
    assert os.stat(target).st_ino != inode  # replaced by a rename, not rewritten in place
    assert leftovers(tmp_path) == {} and leftovers(tmp_path / "real") == {}


def test_dangling_symlink_gets_its_target_created(tmp_path):
    link = tmp_path / "link.g2o"
    link.symlink_to("made.g2o")
    write_text_atomic(link, "new\n")
    assert link.is_symlink() and (tmp_path / "made.g2o").read_text() == "new\n"


# -- special files ------------------------------------------------------------------------------
def test_fifo_is_written_in_place(tmp_path, leftovers):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    write_text_atomic(fifo, "through the pipe\n")
    reader.join(timeout=10)
    assert received == [b"through the pipe\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and leftovers(tmp_path) == {}


def test_character_device_is_written_in_place(tmp_path, leftovers):
    device = _char_device(tmp_path / "null", "null")
    write_text_atomic(device, "discarded\n")
    assert stat.S_ISCHR(os.lstat(device).st_mode) and os.stat(device).st_rdev == os.makedev(1, 3)
    assert leftovers(tmp_path) == {}


def test_full_device_error_names_the_file_and_keeps_the_device(tmp_path, leftovers):
    device = _char_device(tmp_path / "full", "full")
    with pytest.raises(OutputError) as exc:
        write_text_atomic(device, "x" * 100_000)
    assert str(exc.value) == f"{device}: No space left on device" and exc.value.errno == errno.ENOSPC
    assert stat.S_ISCHR(os.lstat(device).st_mode) and leftovers(tmp_path) == {}


def test_dev_null_as_output_through_the_cli(tmp_path, capsys):
    path = tmp_path / "a.g2o"
    path.write_text(SE2_TEXT)
    assert main(["optimize", str(path), "-o", "/dev/null", "--quiet"]) == 0
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert os.listdir(tmp_path) == ["a.g2o"]


# -- failures leave the old file and no temporary file ------------------------------------------
def test_disk_full_mid_write(tmp_path, leftovers):
    target = tmp_path / "o.g2o"
    target.write_text("old\n")

    def half_then_full(fh):
        fh.write(b"VERTEX_SE2 0 0 0 0\n" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as exc:
        write_output(target, half_then_full)
    assert str(exc.value) == f"{target}: No space left on device"
    assert isinstance(exc.value, PoseGraphError) and isinstance(exc.value, OSError)
    assert target.read_text() == "old\n" and leftovers(tmp_path) == {}


def test_failed_flush_to_disk_keeps_the_old_file(tmp_path, monkeypatch, leftovers):
    target = tmp_path / "o.g2o"
    target.write_text("old\n")

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(output_mod.os, "fsync", failing_fsync)
    with pytest.raises(OutputError, match=r"o\.g2o: Input/output error$"):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n" and leftovers(tmp_path) == {}


def test_keyboard_interrupt_mid_write(tmp_path, leftovers):
    target = tmp_path / "o.g2o"
    target.write_text("old\n")

    def interrupted(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_output(target, interrupted)
    assert target.read_text() == "old\n" and leftovers(tmp_path) == {}


# A child process that imports posegraph.io.output without posegraph/__init__.py (which imports
# torch), so it starts in a fraction of a second.
_LIGHT_IMPORT = (
    "import sys, types\n"
    "for name in ('posegraph', 'posegraph.io'):\n"
    "    sys.modules[name] = types.ModuleType(name)\n"
    f"    sys.modules[name].__path__ = [{str(REPO)!r} + '/' + name.replace('.', '/')]\n"
    "from posegraph.io.output import write_output\n"
)


def test_sigterm_mid_write_removes_the_temporary_file(tmp_path, leftovers):
    """The process ends by SIGTERM as usual, the old file intact and no temporary file left."""
    target = tmp_path / "o.g2o"
    target.write_text("old\n")
    script = _LIGHT_IMPORT + (
        "import os, signal, time\n"
        "def fill(fh):\n"
        "    fh.write(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "write_output(sys.argv[1], fill)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, timeout=60)
    assert proc.returncode == -15, proc.stderr.decode()
    assert target.read_text() == "old\n" and leftovers(tmp_path) == {}


def test_missing_folder_and_directory_are_named(tmp_path):
    with pytest.raises(OutputError) as exc:
        write_text_atomic(tmp_path / "nope" / "o.g2o", "x")
    assert str(exc.value) == f"{tmp_path / 'nope' / 'o.g2o'}: No such file or directory"
    with pytest.raises(OutputError) as exc:
        write_text_atomic(tmp_path, "x")
    assert str(exc.value) == f"{tmp_path}: Is a directory"


def test_unwritable_folder_is_named(tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(output_mod.os, "access", lambda p, mode, **kw: os.fspath(p) != str(tmp_path) and real_access(p, mode, **kw))
    with pytest.raises(OutputError) as exc:
        write_text_atomic(tmp_path / "o.g2o", "x")
    assert str(exc.value).startswith(f"{tmp_path / 'o.g2o'}: Permission denied")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_file_size_limit_error_names_the_file(tmp_path):
    """``ulimit -f 0``: writes fail with EFBIG; the one error line names the output (the
    command as a user runs it: a child process with the limit set)."""
    resource = pytest.importorskip("resource")
    out = tmp_path / "o.g2o"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "posegraph.cli", "optimize", str(GRID), "-o", str(out), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY)),
    )
    assert proc.returncode == EXIT_BAD_INPUT and proc.stdout == ""
    assert proc.stderr == f"error: {out}: File too large\n"
    assert os.listdir(tmp_path) == []


def test_library_lookup_survives_an_unusable_temporary_folder(monkeypatch):
    """Under ``ulimit -f 0`` the system library search (which compiles in a temporary folder)
    raised "No usable temporary directory", naming no file; MKL is then looked up elsewhere."""
    import ctypes.util

    from posegraph.solve import mkl

    def no_temporary_folder(name):
        raise FileNotFoundError(errno.ENOENT, "No usable temporary directory found in ['/tmp']")

    monkeypatch.setattr(ctypes.util, "find_library", no_temporary_folder)
    monkeypatch.setattr(mkl, "_LOAD_TRIED", False)
    monkeypatch.setattr(mkl, "_LIBRARY", None)
    assert mkl.pardiso_available() in (True, False)


# -- temporary names ----------------------------------------------------------------------------
def test_temporary_name_is_recognizable_and_in_the_target_folder(tmp_path):
    target = tmp_path / "o.g2o"
    seen, globbed = [], []

    def look(fh):
        seen.extend(os.listdir(tmp_path))
        globbed.extend(tmp_path.glob("*.g2o"))

    write_output(target, look)
    [name] = seen
    assert name.startswith(".o.g2o" + TEMP_MARK) and len(name) == len(".o.g2o" + TEMP_MARK) + 8
    assert globbed == []  # hidden, and never ends with the output's extension
    assert os.listdir(tmp_path) == ["o.g2o"]


def test_stale_temporary_file_is_never_used_or_taken_for_output(tmp_path, monkeypatch):
    stale = tmp_path / f".o.g2o{TEMP_MARK}00000000"
    stale.write_text("left by a killed run\n")
    tokens = iter(["00000000", "11111111"])
    monkeypatch.setattr(output_mod.secrets, "token_hex", lambda n: next(tokens))
    write_text_atomic(tmp_path / "o.g2o", "new\n")
    assert stale.read_text() == "left by a killed run\n"  # another writer's file is left alone
    assert (tmp_path / "o.g2o").read_text() == "new\n"
    assert [p.name for p in tmp_path.glob("*.g2o")] == ["o.g2o"]


def test_long_names_give_short_enough_temporary_names(tmp_path):
    target = tmp_path / ("n" * 250 + ".g2o")
    write_text_atomic(target, "x\n")
    assert target.read_text() == "x\n"


def test_write_text_atomic_is_still_importable_from_g2o():
    from posegraph.io import g2o

    assert g2o.write_text_atomic is write_text_atomic


# -- inputs are never overwritten by accident ---------------------------------------------------
def test_check_outputs_same_file_variants(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inp = tmp_path / "a.g2o"
    inp.write_text(SE2_TEXT)
    (tmp_path / "link.g2o").symlink_to(inp)
    os.link(inp, tmp_path / "hard.g2o")
    for out in ["a.g2o", "./a.g2o", str(inp), "link.g2o", "hard.g2o", f"../{tmp_path.name}/a.g2o"]:
        with pytest.raises(OutputError) as exc:
            check_outputs([out], [str(inp)])
        assert str(exc.value).startswith(f"{out}: is the input file {inp}; refusing to overwrite it")
        check_outputs([out], [str(inp)], overwrite_input=True)
    check_outputs(["b.g2o", None], [str(inp), None])
    check_outputs(["/dev/null"], ["/dev/null"])  # special files are never overwritten


def test_check_outputs_refuses_one_file_for_two_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match=r"^\./o\.g2o: is also the output o\.g2o"):
        check_outputs(["o.g2o", "./o.g2o"])
    check_outputs(["o.g2o", "o.json"])


def test_write_g2o_refuses_the_graphs_own_file(tmp_path):
    path = tmp_path / "a.g2o"
    path.write_text(SE2_TEXT)
    graph = read_g2o(path)
    with pytest.raises(OutputError, match="is the input file"):
        write_g2o(graph, path)
    assert path.read_text() == SE2_TEXT
    write_g2o(graph, path, overwrite_input=True)
    assert read_g2o(path).num_poses == graph.num_poses


@pytest.mark.parametrize("variant", ["./a.g2o", "link.g2o", "a.g2o"])
def test_cli_refuses_to_overwrite_the_input_before_any_work(tmp_path, monkeypatch, capsys, variant):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "a.g2o"
    path.write_text(SE2_TEXT)
    os.chmod(path, 0o444)
    (tmp_path / "link.g2o").symlink_to("a.g2o")
    before = os.stat(path)

    def no_reading(*a, **k):
        raise AssertionError("the input was read before the output was checked")

    import posegraph.io as io_pkg

    monkeypatch.setattr(io_pkg, "read_g2o", no_reading)
    code = main(["optimize", "a.g2o", "-o", variant, "--quiet"])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and out == ""
    assert err == (
        f"error: {variant}: is the input file a.g2o; refusing to overwrite it "
        "(--overwrite-input or overwrite_input=True allows it)\n"
    )
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns, _mode(path)) == (before.st_ino, before.st_mtime_ns, 0o444)
    assert path.read_text() == SE2_TEXT and sorted(os.listdir(tmp_path)) == ["a.g2o", "link.g2o"]


def test_cli_refuses_the_input_as_debug_trace(tmp_path, capsys):
    path = tmp_path / "a.g2o"
    path.write_text(SE2_TEXT)
    code = main(["optimize", str(path), "--debug", str(path), "--quiet"])
    assert code == EXIT_BAD_INPUT and "is the input file" in capsys.readouterr().err
    assert path.read_text() == SE2_TEXT


def test_cli_overwrite_input_keeps_the_mode(tmp_path, capsys):
    path = tmp_path / "a.g2o"
    path.write_text(SE2_TEXT)
    os.chmod(path, 0o640)
    poses = read_g2o(path).num_poses
    code = main(["optimize", str(path), "-o", str(path), "--overwrite-input", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert path.read_text() != SE2_TEXT and _mode(path) == 0o640
    assert read_g2o(path).num_poses == poses and os.listdir(tmp_path) == ["a.g2o"]
