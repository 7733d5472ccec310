"""Tracking numbers in each carrier's real format (pattern only; random digits)."""

from __future__ import annotations

import random
import re
import string

PATTERNS = {
    "DHL": re.compile(r"^JJD\d{18}$"),
    "DPD": re.compile(r"^\d{14}$"),
    "Hermes": re.compile(r"^H\d{19}$"),
    "GLS": re.compile(r"^\d{11}$"),
    "UPS": re.compile(r"^1Z[0-9A-Z]{6}\d{10}$"),
    "Colissimo": re.compile(r"^6A\d{11}$"),
    "PostNL": re.compile(r"^3S[A-Z]{4}\d{9}$"),
    "Royal Mail": re.compile(r"^[A-Z]{2}\d{9}GB$"),
    "Evri": re.compile(r"^H[0-9A-Z]{15}$"),
    "USPS": re.compile(r"^9400\d{18}$"),
    "FedEx": re.compile(r"^\d{12}$"),
}


def tracking_number(carrier: str, rnd: random.Random) -> str:
    def digits(n: int) -> str:
        return "".join(rnd.choice(string.digits) for _ in range(n))

    def upper(n: int) -> str:
        return "".join(rnd.choice(string.ascii_uppercase) for _ in range(n))

    def alnum(n: int) -> str:
        return "".join(rnd.choice(string.digits + string.ascii_uppercase) for _ in range(n))

    return {
        "DHL": lambda: "JJD" + digits(18),
        "DPD": lambda: digits(14),
        "Hermes": lambda: "H" + digits(19),
        "GLS": lambda: digits(11),
        "UPS": lambda: "1Z" + alnum(6) + digits(10),
        "Colissimo": lambda: "6A" + digits(11),
        "PostNL": lambda: "3S" + upper(4) + digits(9),
        "Royal Mail": lambda: upper(2) + digits(9) + "GB",
        "Evri": lambda: "H" + alnum(15),
        "USPS": lambda: "9400" + digits(18),
        "FedEx": lambda: digits(12),
    }[carrier]()
