"""Masking of personal data: what is masked, what must stay, and the spans reported."""

from __future__ import annotations

import pytest

from triage.pii import MaskedText, PiiSpan, is_valid_resident_id, mask_pii, passes_luhn
from triage.text import normalize

# --- checksum helpers, checked against independent known-good examples ----------------------


def _iso7064_check_digit(body: str) -> str:
    """GB 11643 check character computed independently (ISO 7064 MOD 11-2, weights 2^k mod 11)."""
    assert len(body) == 17 and body.isdigit()
    total = sum(int(d) * pow(2, 17 - i, 11) for i, d in enumerate(body))
    value = (12 - total % 11) % 11
    return "X" if value == 10 else str(value)


def _luhn_check_digit(body: str) -> str:
    """The digit that makes ``body + digit`` pass :func:`passes_luhn`."""
    (digit,) = [d for d in "0123456789" if passes_luhn(body + d)]
    return digit


KNOWN_VALID_IDS = ["11010519491231002X", "11010519491231002x"]
KNOWN_LUHN_VALID = [
    "4539148803436467",  # the brief's example
    "79927398713",  # the textbook Luhn example
    "4111111111111111",  # Visa test number
    "5555555555554444",  # Mastercard test number
    "378282246310005",  # Amex test number
    "6011111111111117",  # Discover test number
]


@pytest.mark.parametrize("number", KNOWN_VALID_IDS)
def test_resident_id_checksum_accepts_known_good_example(number):
    assert is_valid_resident_id(number)


def test_independent_check_digit_agrees_with_known_example():
    assert _iso7064_check_digit("11010519491231002") == "X"


@pytest.mark.parametrize(
    "number",
    [
        "110105194912310021",  # wrong check digit
        "110105194912310020",
        "11010519491231002",  # 17 characters
        "11010519491231002XX",  # 19 characters
        "1101051949123100XX",  # X before the last position
        "11010519491231002Y",
    ],
)
def test_resident_id_checksum_rejects_bad_numbers(number):
    assert not is_valid_resident_id(number)


@pytest.mark.parametrize(
    "body", ["44030419900101123", "51010720001231456", "32010619851120003", "65010219700615888"]
)
def test_resident_id_checksum_matches_independent_computation(body):
    good = body + _iso7064_check_digit(body)
    assert is_valid_resident_id(good)
    for wrong in "0123456789X":
        if wrong != good[-1]:
            assert not is_valid_resident_id(body + wrong)


@pytest.mark.parametrize("number", KNOWN_LUHN_VALID)
def test_luhn_accepts_known_good_examples(number):
    assert passes_luhn(number)


@pytest.mark.parametrize(
    "number", ["4539148803436468", "79927398710", "4111111111111112", "5555555555554440"]
)
def test_luhn_rejects_altered_numbers(number):
    assert not passes_luhn(number)


# --- phone numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("我的手机13812345678", "我的手机<PHONE>"),
        ("电话+86 138 1234 5678谢谢", "电话<PHONE>谢谢"),
        ("电话 +86-138-1234-5678", "电话 <PHONE>"),
        ("打0086 15912345678找我", "打<PHONE>找我"),
        ("号码8618612345678", "号码<PHONE>"),
        ("号码 138-1234-5678 找我", "号码 <PHONE> 找我"),
        ("号码 199 8765 4321", "号码 <PHONE>"),
        ("A:13812345678,B:17712345678", "A:<PHONE>,B:<PHONE>"),
    ],
)
def test_mobile_numbers_are_masked_in_common_formats(raw, expected):
    assert mask_pii(raw).text == expected


def test_full_width_mobile_number_is_masked_after_normalize():
    raw = "手机：１３８ １２３４ ５６７８，回电"
    assert mask_pii(normalize(raw)).text == "手机:<PHONE>,回电"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("座机010-87654321", "座机<PHONE>"),
        ("座机(021)62345678", "座机<PHONE>"),
        ("座机0755 86123456", "座机<PHONE>"),
        ("座机 0571-88888888-123 转分机", "座机 <PHONE> 转分机"),
        ("座机02087654321", "座机<PHONE>"),
        ("电话 (021) 6123 4567", "电话 <PHONE>"),
        ("座机 010-6123-4567", "座机 <PHONE>"),
    ],
)
def test_landlines_with_area_code_are_masked(raw, expected):
    assert mask_pii(raw).text == expected


def test_full_width_landline_is_masked_after_normalize():
    assert mask_pii(normalize("电话（０１０）８７６５４３２１")).text == "电话<PHONE>"


# --- e-mail ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("邮箱 zhang.san+vip@example.com.cn 联系", "邮箱 <EMAIL> 联系"),
        ("发到abc_123@qq.com谢谢", "发到<EMAIL>谢谢"),
        ("Mail: Li.Si@Company.COM.", "Mail: <EMAIL>."),
    ],
)
def test_emails_are_masked(raw, expected):
    assert mask_pii(raw).text == expected


# --- resident ID numbers ---------------------------------------------------------------------


def test_valid_resident_id_is_masked_and_wrong_check_digit_is_not():
    assert mask_pii("号码11010519491231002X,请核实").text == "号码<ID>,请核实"
    assert mask_pii("11010519491231002x").text == "<ID>"
    wrong = "号码110105194912310021,请核实"
    assert mask_pii(wrong) == MaskedText(wrong, ())


@pytest.mark.parametrize("body", ["44030419900101123", "32010619851120003"])
def test_generated_resident_ids_are_masked_only_with_the_right_check_digit(body):
    good = body + _iso7064_check_digit(body)
    assert mask_pii(f"就是{good}。").text == "就是<ID>。"
    wrong_digit = "0" if good[-1] != "0" else "1"
    wrong = f"就是{body}{wrong_digit}。"
    assert "<ID>" not in mask_pii(wrong).text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("身份证110105194912310021,请核实", "身份证<ID>,请核实"),  # wrong check digit
        ("我的身份证号码是:110101199003077777。", "我的身份证号码是:<ID>。"),
        ("证件号 110101 19900307 1233", "证件号 <ID>"),
        ("身份证号110101900307123", "身份证号<ID>"),  # the old 15-digit form
        ("卡号4539148803436468", "卡号<CARD>"),  # fails Luhn
        ("银行卡 6222 0212 3456 7890 123 被盗刷", "银行卡 <CARD> 被盗刷"),
    ],
)
def test_numbers_a_label_calls_id_or_card_are_masked_whatever_their_checksum(raw, expected):
    assert mask_pii(raw).text == expected


@pytest.mark.parametrize(
    "raw", ["信用卡尾号1234被扣了200元", "银行卡里3000元没了", "我卡号后四位是6467", "身份证过期了"]
)
def test_labels_without_a_full_number_mask_nothing(raw):
    assert mask_pii(raw) == MaskedText(raw, ())


def test_resident_id_in_groups_of_six_eight_and_four_is_masked():
    assert mask_pii("号码 110101 19900307 1233 谢谢").text == "号码 <ID> 谢谢"
    assert mask_pii("号码 110101-19900307-1233").text == "号码 <ID>"


# --- bank cards ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("卡号4539148803436467", "卡号<CARD>"),
        ("卡号 4539 1488 0343 6467 已冻结", "卡号 <CARD> 已冻结"),
        ("卡号4539-1488-0343-6467", "卡号<CARD>"),
        ("卡号5555555555554444", "卡号<CARD>"),
    ],
)
def test_bank_cards_passing_luhn_are_masked(raw, expected):
    assert mask_pii(raw).text == expected


@pytest.mark.parametrize(
    "raw",
    ["号码4539148803436468", "付款 4539 1488 0343 6468", "编号5555555555554440"],
)
def test_card_like_numbers_failing_luhn_are_not_masked(raw):
    assert mask_pii(raw) == MaskedText(raw, ())


def test_nineteen_digit_unionpay_card_is_masked():
    body = "622202123456789012"
    card = body + _luhn_check_digit(body)
    assert passes_luhn(card) and len(card) == 19
    assert mask_pii(f"银行卡{card}被盗刷").text == "银行卡<CARD>被盗刷"
    broken = body + str((int(card[-1]) + 1) % 10)
    assert "<CARD>" not in mask_pii(f"流水{broken}").text


# --- things that must stay -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "订单号20231105123456",
        "订单号 20231105123456 还没发货",
        "订单2023110512345678",
        "运单号SF1234567890123",
        "订单13812345678901",  # mobile-like prefix inside a longer number
        "我要打12315投诉",
        "价格是3999元,数量2件",
        "2023-11-05 14:30 下单",
    ],
)
def test_order_numbers_and_ordinary_numbers_are_not_masked(raw):
    assert mask_pii(raw) == MaskedText(raw, ())


def test_date_prefixed_eighteen_digit_order_number_is_not_masked_as_id():
    body = "20231105987654321"
    order = body + _iso7064_check_digit(body)
    # The checksum digit alone cannot tell the two apart; the birth-date check does.
    assert order[-1] == _iso7064_check_digit(order[:17])
    assert not is_valid_resident_id(order)
    text = f"订单号{order}还没发货"
    assert mask_pii(text).text == text


# --- spans -----------------------------------------------------------------------------------


def _apply_spans(text: str, spans: tuple[PiiSpan, ...]) -> str:
    out, cursor = [], 0
    for span in spans:
        out += [text[cursor : span.start], f"<{span.kind}>"]
        cursor = span.end
    return "".join([*out, text[cursor:]])


def test_spans_index_the_input_and_agree_with_masked_text():
    text = (
        "我叫张三,手机138-1234-5678,邮箱zs@example.com,"
        "身份证11010519491231002X,卡号4539 1488 0343 6467,座机010-87654321,订单20231105123456"
    )
    masked = mask_pii(text)
    assert [s.kind for s in masked.spans] == ["PHONE", "EMAIL", "ID", "CARD", "PHONE"]
    assert [text[s.start : s.end] for s in masked.spans] == [
        "138-1234-5678",
        "zs@example.com",
        "11010519491231002X",
        "4539 1488 0343 6467",
        "010-87654321",
    ]
    starts = [s.start for s in masked.spans]
    assert starts == sorted(starts)
    assert all(a.end <= b.start for a, b in zip(masked.spans, masked.spans[1:], strict=False))
    assert _apply_spans(text, masked.spans) == masked.text
    assert masked.text.endswith("订单20231105123456")


def test_text_without_pii_comes_back_unchanged_with_no_spans():
    text = "快递三天还没到,请尽快处理"
    assert mask_pii(text) == MaskedText(text, ())


def test_masking_masked_text_changes_nothing():
    once = mask_pii("手机13812345678 邮箱a@b.cn 卡4539148803436467").text
    assert mask_pii(once) == MaskedText(once, ())
