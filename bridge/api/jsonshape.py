"""Cheap bounds on a JSON body, measured on its bytes before it is parsed.

Parsing a body turns every value into a Python object (an empty object `{}` costs 3 bytes
on the wire and 72 in memory), so a body is measured first and refused when it holds too
many values: how many, how deep they nest, and whether it may hold an integer beyond 64
bits (orjson would turn it into a float). Every step is a C-speed pass over the bytes
(`count`, `translate`, `replace`, one regular expression whose matches are bounded), so
a 10 MiB body is measured in tens of milliseconds, whatever it holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate

_STRUCTURE = b'"[]{},'
_DROP_ALL_BUT_STRUCTURE = bytes(sorted(set(range(256)) - set(_STRUCTURE)))
_STRING = re.compile(rb'"[^"]*"')
_NESTING = [0] * 256
_NESTING[ord("[")] = _NESTING[ord("{")] = 1
_NESTING[ord("]")] = _NESTING[ord("}")] = -1
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
LONG_DIGIT_RUN = 19  # 2**63 has 19 digits: a shorter integer always fits 64 bits
_LONG_INTEGER = re.compile(rb"(?<![\d.eE+\-])-?\d{%d,}(?![\d.eE])" % LONG_DIGIT_RUN)
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Shape:
    values: int  # array elements + object members (an empty array or object counts as one)
    depth: int  # deepest nesting of arrays and objects (a bound, when within max_depth)
    long_digits: bool  # a run of >= 19 digits somewhere: maybe an integer beyond 64 bits


def _skeleton(body: bytes, max_values: int) -> bytes | None:
    """The body's structure outside strings: only `[]{},` are left. None when it holds so
    many strings that it is over max_values anyway (which bounds the regex's matches)."""
    if b"\\" in body:  # escaped backslashes first, then escaped quotes: as a parser pairs them
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    # with string contents reduced to brackets and commas, two adjacent quotes either
    # enclose nothing or join two strings' contents: dropping them keeps the pairing
    skeleton = body.translate(None, _DROP_ALL_BUT_STRUCTURE).replace(b'""', b"")
    quotes = skeleton.count(b'"')
    if quotes > 4 * (max_values + 1):  # every string is a member's key or a value
        return None
    return _STRING.sub(b"", skeleton) if quotes else skeleton


def measure(body: bytes, max_values: int, max_depth: int) -> Shape:
    """The body's shape, exact where it matters: `values` > max_values or `depth` >
    max_depth only if the body really is over that limit (depth is 0 if values is over)."""
    long_digits = b"0" * LONG_DIGIT_RUN in body.translate(_DIGITS_TO_ZERO)
    opening = body.count(b"[") + body.count(b"{")
    upper = body.count(b",") + opening
    if upper <= max_values and opening <= max_depth:  # no need to look closer
        return Shape(upper, opening, long_digits)
    skeleton = _skeleton(body, max_values)
    if skeleton is None:
        return Shape(max_values + 1, 0, long_digits)
    values = skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{")
    if values > max_values:
        return Shape(values, 0, long_digits)
    depth = max(accumulate(map(_NESTING.__getitem__, skeleton)), default=0)
    return Shape(values, depth, long_digits)


def integers_beyond_64_bits(body: bytes) -> list[bytes]:
    """Integer literals in the body outside [-2**63, 2**64 - 1] (maybe inside strings too:
    the caller confirms against the parsed value)."""
    found = []
    for m in _LONG_INTEGER.finditer(body):
        token = m.group()
        digits = len(token) - token.startswith(b"-")
        if digits > 20 or not INT64_MIN <= int(token) <= UINT64_MAX:
            found.append(token)
    return found
