#!/usr/bin/env python3
"""Writes bench/doc-64k.json, the document of the `gzip` and `br` scenarios.

A page of an orders API as a JSON service answers it: compact JSON (no spaces),
records with ids, names, addresses, timestamps, prices, item lists and free text,
drawn from fixed word lists with a fixed seed, so the file is the same on every
run and compresses as such answers do (not random bytes). Exactly 65,536 bytes:
the last record's `note` is cut to fit. Usage: bench/make_doc_json.py > bench/doc-64k.json
"""
import json
import random
import sys

SIZE = 65536
rng = random.Random(13)

FIRST = ["Ada", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Kemal", "Lucia", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Samir", "Tove"]
LAST = ["Almeida", "Berger", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad",
        "Ivanova", "Jensen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov"]
CITIES = [("Lisbon", "PT", "1100"), ("Lyon", "FR", "69002"), ("Hamburg", "DE", "20095"),
          ("Gdansk", "PL", "80-001"), ("Turin", "IT", "10121"), ("Ghent", "BE", "9000"),
          ("Aarhus", "DK", "8000"), ("Porto", "PT", "4000"), ("Graz", "AT", "8010")]
STREETS = ["Rua Augusta", "Rue de la Republique", "Moenckebergstrasse", "Dluga", "Via Roma",
           "Veldstraat", "Strøget", "Rua de Santa Catarina", "Herrengasse"]
PRODUCTS = [("SKU-10231", "Stainless steel water bottle 750 ml", 1899),
            ("SKU-20417", "Merino wool hiking socks, pair", 1450),
            ("SKU-31102", "USB-C charging cable 2 m braided", 999),
            ("SKU-40988", "Ceramic pour-over coffee dripper", 2490),
            ("SKU-52310", "Notebook A5 dotted, 160 pages", 1250),
            ("SKU-61874", "LED desk lamp with dimmer", 3990),
            ("SKU-70015", "Cotton tote bag, natural", 790),
            ("SKU-83422", "Wireless mouse, silent click", 2199),
            ("SKU-91006", "Cast iron skillet 26 cm", 4490)]
STATUS = ["pending", "paid", "packed", "shipped", "delivered", "returned"]
CARRIERS = ["DHL", "UPS", "GLS", "DPD", "PostNL"]
WORDS = ("please leave the parcel with the neighbour if nobody answers the door "
         "gift wrap requested call before delivery the side entrance is on the left "
         "invoice to the company address customer asked for an earlier slot").split()


def ts(day, sec):
    return "2026-11-%02dT%02d:%02d:%02dZ" % (day, sec // 3600 % 24, sec // 60 % 60, sec % 60)


def order(i):
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, country, postcode = rng.choice(CITIES)
    items = []
    for _ in range(rng.randint(1, 4)):
        sku, name, price = rng.choice(PRODUCTS)
        items.append({"sku": sku, "name": name, "quantity": rng.randint(1, 3),
                      "unit_price": {"amount": price, "currency": "EUR"}})
    total = sum(it["quantity"] * it["unit_price"]["amount"] for it in items)
    day, sec = rng.randint(1, 30), rng.randint(0, 86399)
    status = rng.choice(STATUS)
    return {
        "id": "ord_%08d" % (40210000 + i),
        "status": status,
        "created_at": ts(day, sec),
        "updated_at": ts(day, min(86399, sec + rng.randint(60, 7200))),
        "customer": {"id": "cus_%06d" % rng.randint(100000, 999999),
                     "name": "%s %s" % (first, last),
                     "email": "%s.%s@example.com" % (first.lower(), last.lower())},
        "shipping_address": {"line1": "%s %d" % (rng.choice(STREETS), rng.randint(1, 240)),
                             "city": city, "postcode": postcode, "country": country},
        "items": items,
        "total": {"amount": total, "currency": "EUR"},
        "shipment": ({"carrier": rng.choice(CARRIERS),
                      "tracking": "%010d" % rng.randint(0, 9999999999)}
                     if status in ("shipped", "delivered", "returned") else None),
        "note": " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12))),
    }


def dump(doc):
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()


def main():
    doc = {"data": [], "meta": {"page": 3, "per_page": 0, "next_cursor": "b3JkXzQwMjEwMDk5", "total": 48213}}
    while True:
        doc["data"].append(order(len(doc["data"])))
        doc["meta"]["per_page"] = len(doc["data"])
        if len(dump(doc)) >= SIZE:
            break
    # the last record's note takes what is left (made longer or cut): exactly SIZE bytes
    last = doc["data"][-1]
    last["note"] = ""
    room = SIZE - len(dump(doc))
    if room < 0:
        doc["data"].pop()
        doc["meta"]["per_page"] = len(doc["data"])
        last = doc["data"][-1]
        last["note"] = ""
        room = SIZE - len(dump(doc))
    text = ""
    while len(text) < room:
        text += rng.choice(WORDS) + " "
    last["note"] = text[:room]
    out = dump(doc)
    assert len(out) == SIZE, len(out)
    sys.stdout.buffer.write(out)


main()
