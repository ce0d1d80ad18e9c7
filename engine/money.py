"""Exact money: integer nano-dollars (1e-9 USD), never float.

A nano-dollar prices a single token at the cheapest catalog rate exactly ($0.005 per 1M
tokens is 5 nano-dollars a token), and an int64 holds $9.2 billion of them. The API shows
money as decimal strings in USD.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

NANO_PER_USD = 1_000_000_000
_SCALE = Decimal(NANO_PER_USD)


# The largest amount parse_usd takes: a nano-dollar count that still fits a signed 64-bit
# column ($9.2 billion).
MAX_USD = Decimal(2**63 - 1) / _SCALE


def parse_usd(value: str | int | float | Decimal, *, field: str = "amount") -> int:
    """USD as text (``"10"``, ``"0.25"``) or a JSON number → nano-dollars.

    Errors: ValueError (naming ``field``) for non-numbers, NaN/infinity, amounts written with
    more than 9 decimal places (even zeros: one nano-dollar is the finest amount there is),
    and amounts beyond ±:data:`MAX_USD`. A float is read through its shortest repr, so
    ``0.1`` means 0.1.
    """
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a decimal amount in USD")
    text = repr(value) if isinstance(value, float) else str(value).strip()
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{field} must be a decimal amount in USD, got {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"{field} must be a finite amount")
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if exponent < -9:
        raise ValueError(f"{field} has more than 9 decimal places")
    if amount.adjusted() >= 10 or abs(amount) > MAX_USD:  # adjusted(): no overflow on 1e999999999
        raise ValueError(f"{field} is too large (at most {MAX_USD:.2f} USD)")
    return int(amount * _SCALE)


def format_usd(nano: int) -> str:
    """Nano-dollars → exact decimal USD text, at least 2 decimals (``"9.99985"``, ``"10.00"``)."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO_PER_USD)
    digits = f"{frac:09d}".rstrip("0")
    if len(digits) < 2:
        digits = digits.ljust(2, "0")
    return f"{sign}{whole}.{digits}"
