"""Masking of personal data so that stored and logged text never carries it.

Mobile and landline numbers, e-mail addresses, 18-digit resident ID numbers (checksum verified)
and bank card numbers (Luhn verified) are replaced by a bracketed tag such as ``<PHONE>``. A
number that a label introduces as an ID or card number (身份证号 …, 卡号 …) is masked even when
its checksum fails: a mistyped ID number is still personal data, and the label rules out an
order number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def is_valid_resident_id(number: str) -> bool:
    """GB 11643 identity number: region digit 1-8, a plausible birth date, valid checksum.

    The date check keeps date-stamped 18-digit order numbers (2023110598...) from matching.
    """
    if len(number) != 18 or not number[:17].isdigit() or number[0] not in "12345678":
        return False
    year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
    if not (1900 <= year <= 2099 and 1 <= month <= 12 and 1 <= day <= 31):
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def passes_luhn(digits: str) -> bool:
    """Luhn checksum used by bank card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


@dataclass(frozen=True)
class PiiSpan:
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class MaskedText:
    text: str
    spans: tuple[PiiSpan, ...]


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# 18 characters, or written in groups of 6, 8 and 4 (110101 19900307 1233).
_ID = re.compile(r"(?<![0-9A-Za-z])\d{6}([ -]?)\d{8}\1\d{3}[\dXx](?![0-9A-Za-z])")
# Between a label and its number only 号码/号, 是/为, a colon and spaces (身份证号码是: …): a label
# followed by other words (银行卡支付订单 …) introduces something else.
_LABEL_GAP = r"(?:号码|号)?\s*(?:是|为)?\s*[:：]?\s*"
_LABELED_ID = re.compile(
    r"(?:身份证|证件)" + _LABEL_GAP + r"(?P<value>\d{6}([ -]?)\d{8}\2\d{3}[\dXx]|\d{15})"
    r"(?![0-9A-Za-z])"
)
_LABELED_CARD = re.compile(
    r"(?:卡号|银行卡|信用卡|储蓄卡|借记卡)"
    + _LABEL_GAP
    + r"(?P<value>\d(?:[ -]?\d){11,18})(?![0-9])"
)
# Card numbers start with 3-6 (Amex/JCB, Visa, Mastercard, UnionPay), which keeps most
# order and tracking numbers (often date-prefixed: 2024...) out.
_CARD = re.compile(r"(?<![0-9])[3-6](?:[ -]?\d){11,17}\d(?![0-9])")
_MOBILE = re.compile(r"(?<![0-9])(?:(?:\+|00)?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?![0-9])")
# The local number may be split in two (6123 4567) after an area code in brackets or with a
# hyphen; three groups of digits with spaces only (0411 2345 6789) are more often an order number.
_LANDLINE = re.compile(
    r"(?<![0-9])(?:(?:\(0\d{2,3}\) ?|0\d{2,3}-)[2-9]\d{2,3}[ -]?\d{4}|0\d{2,3}[ -]?[2-9]\d{6,7})"
    r"(?:-\d{1,5})?(?![0-9])"
)


def _id_like(match: str) -> bool:
    return is_valid_resident_id(re.sub(r"[ -]", "", match))


def _card_like(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    return 13 <= len(digits) <= 19 and passes_luhn(digits)


# Checked in this order; a later pattern never matches inside an earlier span.
# (The tag kinds are listed in ``MASK_KINDS``, which text normalisation leaves in place.)
# A pattern with a ``value`` group masks that group only.
_DETECTORS: tuple[tuple[str, re.Pattern[str], object], ...] = (
    ("EMAIL", _EMAIL, None),
    ("ID", _LABELED_ID, None),
    ("CARD", _LABELED_CARD, None),
    ("ID", _ID, _id_like),
    ("CARD", _CARD, _card_like),
    ("PHONE", _MOBILE, None),
    ("PHONE", _LANDLINE, None),
)


MASK_KINDS = tuple(dict.fromkeys(kind for kind, _, _ in _DETECTORS))


# Every detector needs an "@" or a digit; most messages have neither and skip all five.
_ANY_DIGIT = re.compile(r"\d")


def mask_pii(text: str) -> MaskedText:
    """Replace personal data with ``<KIND>`` tags; spans index the input text."""
    if "@" not in text and not _ANY_DIGIT.search(text):
        return MaskedText(text, ())
    found: list[PiiSpan] = []
    for kind, pattern, check in _DETECTORS:
        group = "value" if "value" in pattern.groupindex else 0
        for match in pattern.finditer(text):
            start, end = match.span(group)
            if callable(check) and not check(match.group(group)):
                continue
            if any(s.start < end and start < s.end for s in found):
                continue
            found.append(PiiSpan(kind, start, end))
    if not found:
        return MaskedText(text, ())
    found.sort(key=lambda s: s.start)
    pieces, cursor = [], 0
    for span in found:
        pieces.append(text[cursor : span.start])
        pieces.append(f"<{span.kind}>")
        cursor = span.end
    pieces.append(text[cursor:])
    return MaskedText("".join(pieces), tuple(found))
