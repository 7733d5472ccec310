"""Reference data for the simulated shop: markets, names, carriers, products."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Market:
    country: str
    locales: tuple[str, ...]
    zones: tuple[str, ...]
    currency: str
    phone_prefixes: tuple[str, ...]  # E.164 prefixes of mobile ranges
    phone_digits: int  # digits after the prefix
    cities: tuple[tuple[str, str], ...]  # (postal code, city)
    carriers: tuple[str, ...]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    weight: float


MARKETS = (
    Market(
        "DE",
        ("de-DE",),
        ("Europe/Berlin",),
        "EUR",
        ("+49151", "+49160", "+49176"),
        8,
        (
            ("10115", "Berlin"),
            ("20095", "Hamburg"),
            ("80331", "München"),
            ("50667", "Köln"),
            ("60311", "Frankfurt am Main"),
        ),
        ("DHL", "DPD", "Hermes", "GLS", "UPS"),
        ("Anna", "Lukas", "Sophie", "Jonas", "Marie", "Felix", "Lea", "Paul", "Jürgen", "Ümit"),
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Becker", "Wagner", "Yılmaz"),
        0.35,
    ),
    Market(
        "AT",
        ("de-AT",),
        ("Europe/Vienna",),
        "EUR",
        ("+43664", "+43676"),
        7,
        (("1010", "Wien"), ("8010", "Graz"), ("5020", "Salzburg")),
        ("DHL", "GLS", "UPS"),
        ("Lena", "Tobias", "Hannah", "Florian", "Katharina"),
        ("Gruber", "Huber", "Bauer", "Wagner", "Pichler"),
        0.08,
    ),
    Market(
        "FR",
        ("fr-FR",),
        ("Europe/Paris",),
        "EUR",
        ("+336", "+337"),
        8,
        (("75001", "Paris"), ("69001", "Lyon"), ("13001", "Marseille"), ("31000", "Toulouse")),
        ("Colissimo", "DPD", "UPS"),
        ("Camille", "Louis", "Chloé", "Hugo", "Léa", "Gabriel", "Zoé"),
        ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Petit"),
        0.15,
    ),
    Market(
        "NL",
        ("nl-NL",),
        ("Europe/Amsterdam",),
        "EUR",
        ("+316",),
        8,
        (("1012", "Amsterdam"), ("3011", "Rotterdam"), ("3511", "Utrecht")),
        ("PostNL", "DHL"),
        ("Daan", "Emma", "Sem", "Julia", "Lucas"),
        ("de Jong", "Jansen", "de Vries", "Bakker"),
        0.10,
    ),
    Market(
        "GB",
        ("en-GB",),
        ("Europe/London",),
        "GBP",
        ("+447911", "+447824", "+447400"),
        6,
        (
            ("SW1A 1AA", "London"),
            ("M1 1AE", "Manchester"),
            ("B1 1AA", "Birmingham"),
            ("EH1 1YZ", "Edinburgh"),
        ),
        ("Royal Mail", "DPD", "Evri"),
        ("Oliver", "Amelia", "George", "Isla", "Harry", "Ava"),
        ("Smith", "Jones", "Taylor", "Brown", "Williams", "O'Brien"),
        0.17,
    ),
    Market(
        "US",
        ("en-US",),
        ("America/New_York", "America/Chicago", "America/Los_Angeles"),
        "USD",
        ("+1212", "+1312", "+1415", "+1646"),
        7,
        (("10001", "New York"), ("60601", "Chicago"), ("94103", "San Francisco")),
        ("UPS", "USPS", "FedEx"),
        ("James", "Olivia", "Liam", "Emma", "Noah", "Mia"),
        ("Johnson", "Garcia", "Miller", "Davis", "Rodriguez"),
        0.15,
    ),
)

PRODUCTS = (
    ("LAMP-OAK-01", "Oak reading lamp", "89.90"),
    ("MUG-STONE-4", "Stoneware mugs, set of 4", "34.00"),
    ("TSHIRT-ORG-M", "Organic cotton T-shirt", "24.95"),
    ("SNEAK-RUN-42", "Running shoes", "119.00"),
    ("JACKET-RAIN", "Rain jacket", "149.00"),
    ("BACKPACK-20L", "Daypack 20 l", "79.00"),
    ("KETTLE-1L7", "Electric kettle", "49.99"),
    ("HEADPH-BT", "Wireless headphones", "129.00"),
    ("BLANKET-WOOL", "Wool blanket", "99.00"),
    ("PAN-CAST-28", "Cast-iron pan 28 cm", "64.50"),
    ("SOCKS-3P", "Merino socks, 3 pairs", "29.90"),
    ("PLANT-POT-L", "Ceramic plant pot", "39.00"),
    ("BOOK-COOK", "Cookbook", "28.00"),
    ("WATCH-STEEL", "Steel wristwatch", "249.00"),
    ("SPEAKER-MINI", "Mini speaker", "59.00"),
)

TRACKING_URLS = {
    "DHL": "https://www.dhl.de/de/privatkunden/pakete-empfangen/verfolgen.html?piececode={n}",
    "DPD": "https://tracking.dpd.de/status/de_DE/parcel/{n}",
    "Hermes": "https://www.myhermes.de/empfangen/sendungsverfolgung/sendungsinformation#{n}",
    "GLS": "https://gls-group.com/track/{n}",
    "UPS": "https://www.ups.com/track?tracknum={n}",
    "Colissimo": "https://www.laposte.fr/outils/suivre-vos-envois?code={n}",
    "PostNL": "https://jouw.postnl.nl/track-and-trace/{n}",
    "Royal Mail": "https://www.royalmail.com/track-your-item#/tracking-results/{n}",
    "Evri": "https://www.evri.com/track/parcel/{n}",
    "USPS": "https://tools.usps.com/go/TrackConfirmAction?tLabels={n}",
    "FedEx": "https://www.fedex.com/fedextrack/?trknbr={n}",
}

HUBS = {
    "DE": ("Leipzig", "Hannover", "Frankfurt", "Nürnberg"),
    "AT": ("Wien", "Linz"),
    "FR": ("Roissy", "Lyon", "Toulouse"),
    "NL": ("Nieuwegein", "Amsterdam"),
    "GB": ("Coventry", "Warrington", "Glasgow"),
    "US": ("Louisville", "Memphis", "Indianapolis"),
}
