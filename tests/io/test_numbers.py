"""posegraph.io.numbers: vectorized number tables, bit-identical to Python's int()/float()."""

from __future__ import annotations

import decimal
import re
from pathlib import Path

import numpy as np
import pytest

from posegraph.io import g2o_lines as g2o_mod
from posegraph.io import numbers

DATA = Path(__file__).resolve().parents[2] / "data"
DATASETS = ["parking-garage", "sphere2500", "manhattan", "smallGrid3D", "tinyGrid3D", "intel"]


def assert_bits_equal(got: np.ndarray, tokens) -> None:
    """``got`` equals ``float(t)`` for every token, bit for bit (signed zeros included)."""
    want = np.array([float(t) for t in tokens], dtype=np.float64)
    got = np.asarray(got, dtype=np.float64).ravel()
    diff = np.flatnonzero(got.view(np.int64) != want.view(np.int64))
    assert diff.size == 0, [(tokens[k], got[k], want[k]) for k in diff[:10]]


def pose_rows(path: Path):
    """{tag: (rows without the tag, tokens of those rows)} of the pose lines of a g2o file."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0]
        head = line.split(None, 1)
        if len(head) == 2 and head[0] in g2o_mod._TAGS:
            rows, toks = out.setdefault(head[0], ([], []))
            rows.append(head[1])
            toks.append(head[1].split())
    return out


def check_file(path: Path) -> None:
    groups = pose_rows(path)
    assert groups
    for name, (rows, toks) in groups.items():
        tag = g2o_mod._TAGS[name]
        table = numbers.parse_table(rows, tag.num_ids, tag.num_values)
        assert table is not None, name
        ids, values = table
        assert ids.dtype == np.int64 and values.dtype == np.float64
        assert ids.flags.c_contiguous and values.flags.c_contiguous
        assert ids.tolist() == [[int(t) for t in row[: tag.num_ids]] for row in toks]
        assert_bits_equal(values, [t for row in toks for t in row[tag.num_ids :]])


@pytest.mark.parametrize("name", DATASETS)
def test_bit_identical_on_datasets(datasets_dir, name):
    path = datasets_dir / f"{name}.g2o"
    if not path.exists():
        pytest.skip(f"{path} not found")
    check_file(path)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.g2o")))
def test_bit_identical_on_data_files(name):
    check_file(DATA / name)


def random_tokens(rng: np.random.Generator, count: int):
    """Decimal tokens of every shape ``float`` reads: 1–20 digit significands with leading
    zeros, the point anywhere (or absent, or at either end), exponents in [-330, 330] with
    'e'/'E' and optional signs, optional signs in front."""
    out = []
    for _ in range(count):
        ndig = int(rng.integers(1, 21))
        digits = "".join(map(str, rng.integers(0, 10, size=ndig)))
        if rng.random() < 0.2:
            digits = "0" * int(rng.integers(1, 5)) + digits
        point = int(rng.integers(-1, len(digits) + 1))  # -1: no point
        mant = digits if point < 0 else digits[:point] + "." + digits[point:]
        sign = rng.choice(["", "", "-", "+"])
        exp = ""
        if rng.random() < 0.6:
            e = int(rng.integers(-330, 331)) if rng.random() < 0.5 else int(rng.integers(-25, 26))
            esign = "-" if e < 0 else rng.choice(["", "+"])
            exp = rng.choice(["e", "E"]) + esign + ("0" if rng.random() < 0.1 else "") + str(abs(e))
        out.append(sign + mant + exp)
    return out


EDGE_FORMS = ["1.", ".5", "-0", "+3e+05", "1E5", "-0.0", "0e999", "1e-400", "9007199254740993",
              "9007199254740992", "4503599627370497", "1e22", "1e23", "123456789012345e-22",
              "2.2250738585072011e-308", "4.9406564584124654e-324", "1.7976931348623157e308",
              "-.5E-0", "+.0", "00000000000000000000001.5", "1e0004", "1e00004", "0.1", "0.3"]


def test_random_tokens_bit_identical():
    """~200k random tokens equal float() bit for bit, whichever way they are converted:
    Clinger's fast path, Eisel–Lemire, or float() itself."""
    rng = np.random.default_rng(1234)
    toks = EDGE_FORMS + random_tokens(rng, 200_000 - len(EDGE_FORMS))
    toks = [t for t in toks if np.isfinite(float(t))]  # the table refuses non-finite values
    width = 8
    toks = toks[: len(toks) // width * width]
    rows = [" ".join(toks[k : k + width]) for k in range(0, len(toks), width)]
    table = numbers.parse_table(rows, 0, width)
    assert table is not None
    assert_bits_equal(table[1], toks)
    scan = numbers._scan(numbers.tokenize(rows, width))
    decided = numbers._fast_values(scan)[1]
    clinger = scan.valid & scan.exact_exponent & scan.exact_significand
    clinger &= (scan.significand < 2**53) & (np.abs(scan.exponent) <= 22)
    assert clinger.mean() > 0.1  # every route is exercised
    assert (decided & ~clinger).mean() > 0.1
    assert (~decided).mean() > 0.1


def near_halfway_tokens(rng: np.random.Generator, count: int):
    """Decimals within a few units of the 18th significant digit of the midpoint between two
    adjacent doubles (and the exact midpoints of small ones): the hardest roundings."""
    out = []
    with decimal.localcontext() as ctx:
        ctx.prec = 800
        for x in np.exp(rng.uniform(-700, 700, size=count)) * rng.choice([1, -1], size=count):
            x = float(x)
            mid = (decimal.Decimal(x) + decimal.Decimal(np.nextafter(x, np.inf))) / 2
            digits, exp = mid.as_tuple().digits, mid.adjusted()
            for delta in (-1, 0, 1):
                m = int("".join(map(str, digits[:18]))) + delta
                out.append(f"{'-' if mid < 0 else ''}{m}e{exp - 17}")
            if len(digits) <= 18:
                out.append(str(mid))
    return out


def test_near_halfway_tokens_bit_identical():
    rng = np.random.default_rng(99)
    toks = [t for t in near_halfway_tokens(rng, 4000) if np.isfinite(float(t))]
    toks += ["9007199254740993", "9007199254740995", "4503599627370496.5", "1e23",
             "8.98846567431158e307", "2.2250738585072014e-308", "2.2250738585072011e-308"]
    toks = toks[: len(toks) // 4 * 4]
    rows = [" ".join(toks[k : k + 4]) for k in range(0, len(toks), 4)]
    table = numbers.parse_table(rows, 0, 4)
    assert table is not None
    assert_bits_equal(table[1], toks)


def test_random_integers_exact():
    rng = np.random.default_rng(7)
    ids = rng.integers(-(2**63), 2**63 - 1, size=5000, endpoint=True).tolist()
    ids += [0, -(2**63), 2**63 - 1, 2**53, 2**53 + 1, -(2**53) - 1, 2**52]
    ids += rng.integers(-1000, 1000, size=5000).tolist()
    texts = [("+" if v >= 0 and k % 3 == 0 else "") + str(v) for k, v in enumerate(ids)]
    texts = [("00" + t if k % 7 == 0 and t[0].isdigit() else t) for k, t in enumerate(texts)]
    rows = [f"{t} 1.5" for t in texts]
    ids_out, _ = numbers.parse_table(rows, 1, 1)
    assert ids_out[:, 0].tolist() == [int(t) for t in texts]


@pytest.mark.parametrize("token", ["9223372036854775808", "-9223372036854775809", "1.0", "1e0",
                                   "1_0", "0x10", "+-1", "", "1-", "\u0661", "١"])
def test_ids_other_than_plain_int64_are_refused(token):
    assert numbers.parse_table([f"{token} 2.5"], 1, 1) is None


MALFORMED = ["1..2", "1e", "--1", "0x10", "1_0", "\u0661", "nan", "inf", "1,0", '"3"', "1e+", ".",
             "-", "e5", "1.2.3", "1e5e5", "1e5.0", "1+1", "++1", "-inf", "infinity", "1e-",
             "\x011", "1\x7f", "1 e5"]


@pytest.mark.parametrize("token", MALFORMED)
def test_malformed_values_refused_or_read_as_float_does(token):
    """The table is refused exactly where float() refuses the token or gives a non-finite value
    (or the token is not one token); otherwise it holds float(token)."""
    row = f"0 {token} 2"
    toks = row.split()
    try:
        expected = [float(t) for t in toks[1:]]
        ok = len(toks) == 3 and all(np.isfinite(expected)) and row.isascii()
    except ValueError:
        ok = False
    table = numbers.parse_table([row], 1, 2)
    if not ok:
        assert table is None
    else:
        assert table is not None
        assert_bits_equal(table[1], toks[1:])


def test_underscore_value_is_read_as_float_reads_it():
    table = numbers.parse_table(["3 1_0 2"], 1, 2)
    assert table is not None and table[1].tolist() == [[10.0, 2.0]]


@pytest.mark.parametrize("sep", [" ", "\t", "\x0b", "\x0c", "\x1f", "\u00a0", "\u2003", " \t "])
def test_whitespace_is_str_split_whitespace(sep):
    rows = [sep.join(["7", "1.5", "-2e3"]) + sep]
    ids, values = numbers.parse_table(rows, 1, 2)
    assert ids.tolist() == [[7]] and values.tolist() == [[1.5, -2000.0]]


@pytest.mark.parametrize("rows", [["1 2", "1 2 3"], ["1 2 3 4"], ["1\x002 3"], ["1 2\u00e93"]])
def test_wrong_token_counts_and_odd_bytes_are_refused(rows):
    assert numbers.parse_table(rows, 1, 2) is None


def reference_row(row: str, num_ids: int, num_values: int):
    """What the table must hold for one line: ids by int() (plain [+-]digits in int64 only),
    values by float() (finite only); None where the table must be refused."""
    toks = row.split()
    if len(toks) != num_ids + num_values:
        return None
    if not all(re.fullmatch(r"[+-]?[0-9]+", t) for t in toks[:num_ids]):
        return None
    ids = [int(t) for t in toks[:num_ids]]
    if not all(-(2**63) <= v < 2**63 for v in ids):
        return None
    try:
        values = [float(t) for t in toks[num_ids:]]
    except ValueError:
        return None
    return (ids, values) if all(np.isfinite(values)) else None


def test_random_malformed_rows_agree_with_int_and_float():
    """Short random strings over the number alphabet: the table is refused exactly when
    int()/float() refuse a token, otherwise it holds their values."""
    rng = np.random.default_rng(5)
    alphabet = list("0123456789+-.eE") + ["1", "5", "0", "e", "."]
    accepted = 0
    for _ in range(5000):
        row = " ".join("".join(rng.choice(alphabet, size=rng.integers(1, 8))) for _ in range(3))
        want, got = reference_row(row, 1, 2), numbers.parse_table([row], 1, 2)
        assert (want is None) == (got is None), row
        if want is not None:
            accepted += 1
            assert got[0].tolist() == [want[0]], row
            assert_bits_equal(got[1], row.split()[1:])
    assert accepted > 100


def test_ids_of_thousands_of_digits_are_refused_not_raised():
    """int() refuses more than 4300 digits with a ValueError: the table is refused instead
    (the reference parser then names the line), unless only leading zeros make it long."""
    assert numbers.parse_table([f"{'1' * 5000} 1 2"], 1, 2) is None
    assert numbers.parse_table([f"3 1 2\n-{'9' * 20} 1 2"][0].split("\n"), 1, 2) is None
    ids, values = numbers.parse_table([f"{'0' * 5000}7 1 2", "-0008 3 4"], 1, 2)
    assert ids.tolist() == [[7], [-8]] and values.tolist() == [[1.0, 2.0], [3.0, 4.0]]
