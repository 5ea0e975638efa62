"""Vectorized conversion of whitespace-separated ASCII number tables, bit-identical to Python.

The bulk g2o reader hands over the lines of one pose tag (without the tag); :func:`parse_table`
returns their integer ids and float64 values, or None when it cannot vouch for the result, so
that the caller falls back to the line-by-line reference parser.

How it works, on the bytes of the joined lines (numpy only, no Python loop per number), in
blocks of about 64 KiB of text so that the per-byte temporaries stay small:

* tokens are the runs of non-whitespace bytes, whitespace being exactly what ``str.split``
  splits on in ASCII (space, ``\\t \\n \\v \\f \\r`` and ``\\x1c``–``\\x1f``); every line must
  hold the expected number of tokens;
* a token of the form ``[+-]digits[.digits][(e|E)[+-]digits]`` has its decimal significand
  ``M`` (its digits without the point) computed exactly when it has at most 18 significant
  digits: each byte gets the term ``d·10^place`` (``place`` = significand digits after it)
  and a token's sum is a difference of running sums (:func:`_sums`, which also counts the
  points and the digits after them); its decimal exponent ``k`` is the exponent field minus
  the fraction digits;
* Clinger's fast path (W. D. Clinger, "How to read floating point numbers accurately",
  PLDI 1990, §3): when ``M < 2^53`` and ``|k| ≤ 22`` both ``M`` and ``10^|k|`` are exact
  doubles, so ``M·10^k`` (or ``M / 10^-k``) is one correctly rounded IEEE operation, the value
  ``float`` returns;
* other exact ``M`` and ``k`` (17-digit ``repr`` output, large exponents) go through the
  Eisel–Lemire algorithm (D. Lemire, "Number parsing at a gigabyte per second", Software:
  Practice and Experience 51(8), 2021), which returns the correctly rounded double or says it
  cannot decide;
* every other token (more significant digits, undecided or subnormal results, ``nan``,
  ``1_0``, anything odd) is converted by Python's ``float`` itself, one at a time; if
  ``float`` refuses one the whole table is refused.

Ids must be plain ``[+-]digits`` within int64; anything else refuses the table (``int`` also
accepts ``1_0`` or non-ASCII digits: those files are left to the reference parser).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

#: ``M < 2^53``: exact in float64 (Clinger's fast path)
_EXACT_SIGNIFICAND = 2**53
#: 10^0 … 10^22, all exact in float64 (10^22 = 2^22 · 5^22 and 5^22 < 2^53)
_EXACT_POWERS = np.array([10.0**k for k in range(23)])
#: significands are summed in two halves of this many digits …
_HALF_DIGITS = 9
#: … so they are exact up to this many significant digits
_MAX_SIGNIFICAND_DIGITS = 2 * _HALF_DIGITS
#: byte codes summed per token: digits 0–9 and the point (10)
_POINT_CODE = 10
#: the lower sum packs, from bit 0: the lower 9 significand digits (< 10^9 < 2^30), the
#: number of points (bits 30–45) and, for a single point, 1 + the digits after it (bits 46–63)
_POINTS_SHIFT, _FRACTION_SHIFT = 30, 46


def _term(h: int, place: int, code: int) -> int:
    """Summed term of a byte of the given code, ``place`` significand digits before its
    token's significand end (−1: in the exponent), in the lower (h = 0) or upper sum."""
    if code == _POINT_CODE:
        return (1 << _POINTS_SHIFT) + ((place + 1) << _FRACTION_SHIFT) if h == 0 else 0
    p = place - _HALF_DIGITS * h
    if h == 1 and place >= _MAX_SIGNIFICAND_DIGITS and code:
        return _INEXACT_MARK  # a nonzero digit beyond the 18 the sums hold
    return code * 10**p if 0 <= p < _HALF_DIGITS else 0


#: added to the upper sum (otherwise < 10^9) by each nonzero digit of place ≥ 18
_INEXACT_MARK = 10**_HALF_DIGITS
#: places are clipped to [−1, _MAX_PLACE]; a point there has too many digits after it to count
_MAX_PLACE = 63
#: _TERMS[h][(place + 1) · 11 + code] for places −1 … _MAX_PLACE
_TERMS = [
    np.array(
        [_term(h, p, c) for p in range(-1, _MAX_PLACE + 1) for c in range(11)],
        dtype=np.uint64,
    )
    for h in range(2)
]
#: lines are converted in blocks of about this many bytes of text
_BLOCK_BYTES = 1 << 16
#: exponents with more digits than this leave the fast path (float() converts them)
_MAX_EXPONENT_DIGITS = 4
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class Tokens:
    """Whitespace-separated tokens of some ASCII text: ``text[starts[i]:ends[i]]``."""

    text: str
    buf: np.ndarray  # (n,) uint8, the bytes of ``text``
    starts: np.ndarray  # (T,) int64
    ends: np.ndarray  # (T,) int64, exclusive
    start_mask: np.ndarray  # (n,) bool, True at each token's first byte
    whitespace: np.ndarray  # (n,) bool

    def __len__(self) -> int:
        return int(self.starts.size)

    def strings(self, which: np.ndarray) -> List[str]:
        """The tokens at indices ``which`` as Python strings."""
        text = self.text
        return [text[s:e] for s, e in zip(self.starts[which].tolist(), self.ends[which].tolist())]


def tokenize(rows: Sequence[str], width: int) -> Optional[Tokens]:
    """Tokens of ``rows`` joined by newlines, or None unless every row holds exactly ``width``
    tokens and the text is ASCII once split as ``str.split`` does (non-ASCII whitespace such
    as NBSP separates tokens; any other non-ASCII character gives None)."""
    text = "\n".join(rows)
    if not text.isascii():
        rows = [" ".join(row.split()) for row in rows]
        text = "\n".join(rows)
        if not text.isascii():
            return None
    buf = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    control = buf < 9
    control |= (buf - np.uint8(14)) < 14
    if control.any():
        return None  # a control byte that str.split does not split on: float() refuses it
    ws = buf <= 32
    start_mask = ~ws
    end_mask = start_mask.copy()
    start_mask[1:] &= ws[:-1]
    end_mask[:-1] &= ws[1:]
    starts = np.flatnonzero(start_mask)
    if starts.size != len(rows) * width:
        return None
    ends = np.flatnonzero(end_mask)
    ends += 1
    # token r·width of each row r starts in it and token r·width + width − 1 ends in it: as
    # tokens are ordered and there are rows·width of them, every row holds exactly width
    lengths = np.array([len(row) for row in rows])
    line_ends = np.cumsum(lengths + 1) - 1
    if (starts[::width] < line_ends - lengths).any():
        return None
    if (ends[width - 1 :: width] > line_ends).any():
        return None
    return Tokens(text, buf, starts, ends, start_mask, ws)


@dataclass
class _Scan:
    """Per-token structure of :class:`Tokens` (see :func:`_scan`)."""

    valid: np.ndarray  # (T,) bool: [+-]digits[.digits][(e|E)[+-]digits]
    significand: np.ndarray  # (T,) int64, M where exact_significand
    exact_significand: np.ndarray  # (T,) bool: M and the fraction digits are exact
    exponent: np.ndarray  # (T,) int64, k: value = ±M · 10^k
    exact_exponent: np.ndarray  # (T,) bool: k is exact (short exponent field)
    negative: np.ndarray  # (T,) bool
    plain: np.ndarray  # (T,) bool: no point and no exponent (an integer)


def _token_of(tok: Tokens, positions: np.ndarray) -> np.ndarray:
    """Index of the token holding each byte position (sorted)."""
    return np.searchsorted(tok.starts, positions, side="right") - 1


def _scan(tok: Tokens) -> _Scan:
    """Check every token against the decimal grammar and compute its significand and exponent.

    Byte classes are boolean masks; what is rare (a byte outside the grammar, a misplaced
    sign, an exponent) is located only when present. Points and significand digits are
    summed per token by :func:`_sums`.
    """
    buf, starts, ends = tok.buf, tok.starts, tok.ends
    digit = buf - np.uint8(48)
    is_digit = digit < 10
    np.multiply(digit, is_digit, out=digit)  # 0 on every other byte
    is_dot = buf == 46
    is_e = buf | np.uint8(32)
    is_e = np.equal(is_e, 101, out=is_e.view(bool))  # 'e' or 'E'
    is_sign = buf - np.uint8(43)
    is_sign &= np.uint8(0xFD)
    is_sign = np.equal(is_sign, 0, out=is_sign.view(bool))  # '+' (43) or '-' (45)
    valid = ends - starts < 2 ** (_FRACTION_SHIFT - _POINTS_SHIFT)  # point counts fit
    known = is_digit | is_dot
    known |= is_e
    known |= is_sign
    known |= tok.whitespace
    if not known.all():
        valid[_token_of(tok, np.flatnonzero(~known))] = False
    misplaced = is_sign & ~tok.start_mask  # a sign is first in its token or follows the 'e'
    misplaced[1:] &= ~is_e[:-1]
    if misplaced.any():
        valid[_token_of(tok, np.flatnonzero(misplaced))] = False
    mant_end = ends
    if is_e.any():
        e_pos = np.flatnonzero(is_e)
        e_tok = _token_of(tok, e_pos)
        valid[e_tok[1:][e_tok[1:] == e_tok[:-1]]] = False  # two exponents
        mant_end = ends.copy()
        mant_end[e_tok] = e_pos

    # digits_before[p] = number of digit bytes before byte p
    digits_before = np.empty(buf.size + 1, dtype=np.int32)
    digits_before[0] = 0
    np.cumsum(is_digit, dtype=np.int32, out=digits_before[1:])
    mant_digits = digits_before[mant_end]
    count = mant_digits - digits_before[starts]
    valid &= count > 0  # at least one digit before the exponent
    code = is_dot.view(np.uint8) * np.uint8(_POINT_CODE)
    code += digit
    significand, exact_significand, points, fraction = _sums(tok, code, digits_before, mant_digits)
    valid &= points <= 1
    exponent, exact_exponent = _exponents(tok, digit, digits_before, mant_end, valid)
    exponent -= fraction
    return _Scan(
        valid=valid,
        significand=significand,
        exact_significand=exact_significand,
        exponent=exponent,
        exact_exponent=exact_exponent,
        negative=buf[starts] == 45,
        plain=(mant_end == ends) & (points == 0),
    )


def _exponents(tok: Tokens, digit: np.ndarray, digits_before: np.ndarray, mant_end: np.ndarray,
               valid: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(exponent field value, whether it was read) per token. A token whose exponent field is
    not ``[+-]digits`` is marked invalid in ``valid``; fields of more than
    ``_MAX_EXPONENT_DIGITS`` digits are not read (0, False)."""
    ntok = len(tok)
    exponent = np.zeros(ntok, dtype=np.int64)
    exact = np.ones(ntok, dtype=bool)
    has = np.flatnonzero(mant_end < tok.ends)
    if has.size == 0:
        return exponent, exact
    ep, end = mant_end[has], tok.ends[has]
    count = (digits_before[end] - digits_before[ep + 1]).astype(np.int64)
    after = tok.buf[np.minimum(ep + 1, tok.buf.size - 1)]  # the byte after the 'e'
    signed = ((after == 43) | (after == 45)) & (end - ep > 1)
    valid[has[(count == 0) | (end - ep - 1 != count + signed)]] = False
    width = _MAX_EXPONENT_DIGITS
    at = end[:, None] - np.arange(width, 0, -1)  # the last `width` bytes of each token
    digits = digit[np.maximum(at, 0)].astype(np.int64)
    digits[at < (end - np.minimum(count, width))[:, None]] = 0
    value = digits @ (10 ** np.arange(width - 1, -1, -1))
    value[signed & (after == 45)] *= -1
    exponent[has] = value
    exact[has] = count <= width
    return exponent, exact


def _sums(
    tok: Tokens, code: np.ndarray, digits_before: np.ndarray, mant_digits: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per token: its significand ``M`` (int64), whether ``M`` and the fraction digits are
    exact (at most 18 significant digits, fewer than 63 digits after the point), its number of
    points and the digits after its point (where it has one, before the exponent).

    Every byte of a token's span gets a term from ``_TERMS`` by its code (digit or point) and
    ``place`` = significand digits after it (negative in the exponent: digits there add 0):
    ``d · 10^place`` for digits. Terms are summed as differences of uint64 running sums, exact
    modulo 2^64, in two 9-digit halves; the lower sum also packs the point count and the
    fraction digits (see ``_POINTS_SHIFT``); in the upper sum each nonzero digit of place 18 or
    more adds ``_INEXACT_MARK``. The upper half is summed only when some nonzero digit has
    place 9 or more.
    """
    first = int(tok.starts[0])
    spans = np.diff(tok.starts, append=tok.buf.size)
    place = np.repeat(mant_digits, spans)  # digits before each byte's significand end
    place -= digits_before[first + 1 :]  # … minus digits up to and including the byte
    np.clip(place, -1, _MAX_PLACE, out=place)
    place += 1
    place *= 11
    codes = code[first:]
    place += codes  # (place + 1) · 11 + code
    lo, hi = tok.starts - first, tok.ends - first
    running = np.empty(place.size + 1, dtype=np.uint64)
    running[0] = 0
    _TERMS[0].take(place, out=running[1:], mode="clip")
    np.cumsum(running, out=running)
    low = running[hi] - running[lo]
    significand = (low & np.uint64((1 << _POINTS_SHIFT) - 1)).astype(np.int64)
    points = ((low >> np.uint64(_POINTS_SHIFT)) & np.uint64(0xFFFF)).astype(np.int64)
    fraction = (low >> np.uint64(_FRACTION_SHIFT)).astype(np.int64)
    fraction -= points == 1  # 1 + digits after the point was stored
    fraction[points != 1] = 0
    exact_fraction = fraction < _MAX_PLACE
    upper = place >= (_HALF_DIGITS + 1) * 11  # place ≥ 9 …
    upper &= (codes - np.uint8(1)) < 9  # … of a digit 1–9
    exact = np.ones(significand.size, dtype=bool)
    if upper.any():
        _TERMS[1].take(place, out=running[1:], mode="clip")
        np.cumsum(running, out=running)
        high = (running[hi] - running[lo]).astype(np.int64)
        exact = high < _INEXACT_MARK
        high[~exact] = 0
        significand += high * 10**_HALF_DIGITS
    exact &= exact_fraction
    return significand, exact, points, fraction


def _fast_values(scan: _Scan) -> Tuple[np.ndarray, np.ndarray]:
    """(values, where they are exact) of the tokens with an exact significand and exponent:
    Clinger's fast path (``M < 2^53``, ``|k| ≤ 22``: ``M · 10^k`` or ``M / 10^-k``, one
    correctly rounded operation on exact doubles), else :func:`_eisel_lemire` where it can
    decide the rounding."""
    size = np.abs(scan.exponent)
    known = scan.valid & scan.exact_exponent
    known &= scan.exact_significand
    fast = known & (scan.significand < _EXACT_SIGNIFICAND)
    fast &= size <= 22
    power = _EXACT_POWERS.take(size, mode="clip")
    significand = scan.significand.astype(np.float64)  # exact where fast
    values = significand * power
    np.divide(significand, power, out=values, where=scan.exponent < 0)
    long = np.flatnonzero(known & ~fast)
    if long.size:
        bits, decided = _eisel_lemire(scan.significand[long].astype(np.uint64),
                                      scan.exponent[long])
        values[long] = bits.view(np.float64)
        fast[long] = decided
    np.negative(values, out=values, where=scan.negative)
    return values, fast


def _powers_of_ten_128() -> Tuple[np.ndarray, np.ndarray]:
    """(high, low) 64-bit words of ⌊10^e · 2^s⌋ normalized to [2^127, 2^128), for e in
    [_POW10_MIN, _POW10_MAX] (the rounded-down table of Eisel–Lemire)."""
    high, low = [], []
    for e in range(_POW10_MIN, _POW10_MAX + 1):
        if e >= 0:
            v = 10**e
            shift = 128 - v.bit_length()
            m = v << shift if shift >= 0 else v >> -shift
        else:
            d = 10**-e
            m = (1 << (127 + d.bit_length())) // d
            m >>= m.bit_length() - 128
        high.append(m >> 64)
        low.append(m & (2**64 - 1))
    return np.array(high, dtype=np.uint64), np.array(low, dtype=np.uint64)


_POW10_MIN, _POW10_MAX = -348, 347
_POW10_HIGH, _POW10_LOW = _powers_of_ten_128()
_U = np.uint64


def _mul_64x64(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(high, low) 64-bit words of the 128-bit products ``a · b`` (uint64), by 32-bit halves."""
    mask = _U(0xFFFFFFFF)
    a0, a1, b0, b1 = a & mask, a >> _U(32), b & mask, b >> _U(32)
    p00, p01, p10 = a0 * b0, a0 * b1, a1 * b0
    mid = (p00 >> _U(32)) + (p01 & mask) + (p10 & mask)
    low = (mid << _U(32)) | (p00 & mask)
    high = a1 * b1 + (p01 >> _U(32)) + (p10 >> _U(32)) + (mid >> _U(32))
    return high, low


def _eisel_lemire(man: np.ndarray, exp10: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(float64 bit patterns of ``man · 10^exp10``, where they are the correctly rounded
    value): the Eisel–Lemire algorithm (D. Lemire, "Number parsing at a gigabyte per second",
    Software: Practice and Experience 51(8), 2021, Alg. 1; steps as in Go's
    ``strconv.eiselLemire64``), vectorized. ``man`` < 2^64; undecided where the 128-bit
    product cannot settle the rounding, the result would be subnormal or infinite, or
    ``exp10`` is outside the table (those tokens go to ``float``)."""
    bits = np.zeros(man.size, dtype=np.uint64)
    ok = (exp10 >= _POW10_MIN) & (exp10 <= _POW10_MAX)
    zero = man == 0  # ±0 whatever the exponent
    man = np.where(zero, _U(1), man)
    index = np.clip(exp10 - _POW10_MIN, 0, _POW10_MAX - _POW10_MIN)
    # normalization: bit length by the float exponent, corrected where rounding carried
    length = np.frexp(man.astype(np.float64))[1].astype(np.uint64)
    length -= (man >> (length - _U(1))) == 0
    clz = _U(64) - length
    man = man << clz
    exp2 = ((217706 * exp10) >> 16) + (64 + 1023) - clz.astype(np.int64)
    high, low = _mul_64x64(man, _POW10_HIGH[index])
    wider = ((high & _U(0x1FF)) == _U(0x1FF)) & (low + man < man)
    if wider.any():  # refine with the low 64 bits of the power
        w = np.flatnonzero(wider)
        y_high, y_low = _mul_64x64(man[w], _POW10_LOW[index[w]])
        m_low = low[w] + y_high
        m_high = high[w] + (m_low < low[w])
        ok[w] &= ~(((m_high & _U(0x1FF)) == _U(0x1FF)) & (m_low + _U(1) == 0)
                   & (y_low + man[w] < man[w]))
        high[w], low[w] = m_high, m_low
    msb = high >> _U(63)
    mantissa = high >> (msb + _U(9))
    exp2 -= (msb ^ _U(1)).astype(np.int64)
    ok &= ~((low == 0) & ((high & _U(0x1FF)) == 0) & ((mantissa & _U(3)) == _U(1)))  # halfway
    mantissa += mantissa & _U(1)
    mantissa >>= _U(1)
    carry = (mantissa >> _U(53)) > 0
    mantissa[carry] >>= _U(1)
    exp2[carry] += 1
    ok &= (exp2 >= 1) & (exp2 <= 0x7FE)  # not subnormal, not infinite
    bits = (np.clip(exp2, 0, 0x7FF).astype(np.uint64) << _U(52)) | (
        mantissa & _U((1 << 52) - 1))
    bits[zero] = 0
    ok |= zero
    return bits, ok


def parse_floats(tok: Tokens, scan: _Scan, skip: np.ndarray) -> Optional[np.ndarray]:
    """float64 values of all tokens but those in the mask ``skip`` (left as they come), each
    bit-identical to ``float(token)``; None if ``float`` refuses one of them."""
    values, fast = _fast_values(scan)
    fast |= skip
    if not fast.all():
        slow = np.flatnonzero(~fast)
        try:
            values[slow] = [float(s) for s in tok.strings(slow)]
        except ValueError:
            return None
    return values


def parse_ints(tok: Tokens, scan: _Scan, which: np.ndarray) -> Optional[np.ndarray]:
    """int64 values of the tokens ``which``, each ``[+-]digits`` within int64, or None."""
    plain = scan.valid[which] & scan.plain[which]
    if not plain.all():
        return None
    values = scan.significand[which]
    np.negative(values, out=values, where=scan.negative[which])
    big = np.flatnonzero(~scan.exact_significand[which])
    if big.size:
        strings = tok.strings(which[big])
        # more than 19 significant digits is beyond int64 (and, past 4300 digits, beyond
        # what int() converts at all)
        if any(len(s.lstrip("+-").lstrip("0")) > 19 for s in strings):
            return None
        exact = [int(s) for s in strings]
        if not all(_INT64_MIN <= v <= _INT64_MAX for v in exact):
            return None
        values[big] = exact
    return values


def parse_table(
    rows: Sequence[str], num_ids: int, num_values: int
) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Lines of ``num_ids`` integer ids then ``num_values`` numbers → ``(ids (R, num_ids) int64,
    values (R, num_values) float64)``, both contiguous and equal to ``int``/``float`` of each
    token; None if a line has another token count, an id is not ``[+-]digits`` within int64,
    ``float`` refuses a value, or a value is not finite.

    Lines are converted in blocks of about ``_BLOCK_BYTES`` of text, so that the per-byte
    temporaries stay small (cache-resident and reused by the allocator).
    """
    if not rows:
        return np.zeros((0, num_ids), dtype=np.int64), np.zeros((0, num_values))
    ends = np.cumsum([len(row) + 1 for row in rows])
    cuts = np.searchsorted(ends, np.arange(_BLOCK_BYTES, int(ends[-1]), _BLOCK_BYTES))
    bounds = [0] + np.unique(cuts + 1).tolist()
    if bounds[-1] < len(rows):
        bounds.append(len(rows))
    blocks = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        block = _parse_block(rows[lo:hi], num_ids, num_values)
        if block is None:
            return None
        blocks.append(block)
    if len(blocks) == 1:
        return blocks[0][0], np.ascontiguousarray(blocks[0][1])
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def _parse_block(
    rows: Sequence[str], num_ids: int, num_values: int
) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """:func:`parse_table` of a few lines at once (the values may be a strided view)."""
    width = num_ids + num_values
    tok = tokenize(rows, width)
    if tok is None:
        return None
    scan = _scan(tok)
    is_id = np.zeros((len(rows), width), dtype=bool)
    is_id[:, :num_ids] = True
    ids = parse_ints(tok, scan, np.flatnonzero(is_id))
    values = parse_floats(tok, scan, is_id.ravel())
    if ids is None or values is None:
        return None
    values = values.reshape(len(rows), width)[:, num_ids:]
    if not np.isfinite(values).all():
        return None
    return ids.reshape(len(rows), num_ids), values
