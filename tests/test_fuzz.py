"""Fuzzing g2o input with Hypothesis (quick profile, ~30 s): whatever the text, the Python API
(read_g2o → initialize → build_problem → optimize) and the CLI's ``main`` end cleanly — finite
results, a PoseGraphError naming the file (exit 2, one line), or a reported failed
optimization (exit 1, one line) — never another exception, a traceback, ``internal error``,
several stderr lines or JSON with NaN. The long campaign is ``benchmarks/fuzz.py``, whose
mutations and checks these tests share."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("posegraph_fuzz_bench", REPO / "benchmarks" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

SEEDS = sorted(fuzz.seed_texts().items())
QUICK = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,  # the same cases on every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- structured g2o lines ------------------------------------------------------------------------

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-10, 10).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(fuzz.ODD_NUMBERS),
)
small_numbers = st.one_of(st.floats(-3, 3).map(repr), st.sampled_from(["0", "1", "0.5", "-1"]))
ids = st.one_of(st.integers(0, 6).map(str), st.integers(-(2**64), 2**64).map(str), st.sampled_from(fuzz.ODD_NUMBERS))
separators = st.sampled_from([" ", " ", " ", "\t", "  ", "\x0b", "\x0c", "\u2028", "\r"])


def _line(tag: str, num_ids: int, num_values: int):
    """A line of ``tag``: mostly well-formed (small values), sometimes odd tokens or counts."""
    values = st.lists(st.one_of(small_numbers, small_numbers, numbers), min_size=num_values, max_size=num_values)
    count = st.one_of(st.just(0), st.just(0), st.just(0), st.integers(-2, 2))

    @st.composite
    def build(draw):
        toks = [tag] + [draw(st.one_of(st.integers(0, 6).map(str), ids)) for _ in range(num_ids)] + draw(values)
        extra = draw(count)
        toks = toks[: len(toks) + extra] if extra < 0 else toks + ["1"] * extra
        sep = draw(separators)
        return sep.join(toks)

    return build()


SE2_LINES = st.one_of(_line("VERTEX_SE2", 1, 3), _line("EDGE_SE2", 2, 9), _line("FIX", 1, 0))
SE3_LINES = st.one_of(
    _line("VERTEX_SE3:QUAT", 1, 7), _line("EDGE_SE3:QUAT", 2, 28), _line("FIX", 1, 0),
    _line("VERTEX_TRACKXYZ", 1, 3), _line("EDGE_SE3_TRACKXYZ", 3, 9), _line("PARAMS_SE3OFFSET", 1, 7),
)
OTHER_LINES = st.one_of(st.just(""), st.just("# comment"), st.text(max_size=30), st.sampled_from(fuzz.TAGS))


@st.composite
def g2o_files(draw) -> bytes:
    kind = draw(st.sampled_from([SE2_LINES, SE3_LINES]))
    lines = draw(st.lists(st.one_of(kind, kind, kind, OTHER_LINES), min_size=1, max_size=14))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    data = ending.join(lines).encode("utf-8", "surrogatepass")
    return (b"\xef\xbb\xbf" if draw(st.booleans()) and draw(st.booleans()) else b"") + data


def _check(data: bytes, rng: random.Random, tmp_path: Path) -> None:
    outcome, where, detail = fuzz.run_case(data, rng, str(tmp_path))
    assert outcome != "defect", f"{where}: {detail}\ninput: {data[:2000]!r}"


@QUICK
@given(data=g2o_files(), seed=st.integers(0, 2**32 - 1))
def test_structured_g2o_lines_end_cleanly(tmp_path_factory, data, seed):
    _check(data, random.Random(seed), tmp_path_factory.mktemp("fuzz"))


@QUICK
@given(seed=st.sampled_from(SEEDS), rng=st.randoms(use_true_random=False), steps=st.integers(1, 3))
def test_mutated_data_graphs_end_cleanly(tmp_path_factory, seed, rng, steps):
    data = fuzz.mutate(seed[1], rng, steps)
    _check(data, rng, tmp_path_factory.mktemp("fuzz"))


def test_fuzz_seeds_and_checks_are_meaningful(tmp_path):
    """The seeds are valid graphs (ok), and the checks flag what they should."""
    for name, text in SEEDS:
        path = tmp_path / name
        path.write_text(text)
        assert fuzz.api_outcome(str(path)) == ("ok", ""), name
    path = tmp_path / "bad.g2o"
    path.write_text("VERTEX_SE2 0 0 0 x\n")
    assert fuzz.api_outcome(str(path))[0] == "refused"
    assert fuzz.cli_outcome(str(path), ["info", str(path)])[0] == "refused"
    assert fuzz.cli_outcome("elsewhere.g2o", ["info", str(path)])[0] == "defect"  # file not named
