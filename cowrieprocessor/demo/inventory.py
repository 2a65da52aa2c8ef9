"""The inventory rows: one ``asn_inventory`` row per ASN, one ``ip_inventory`` row per IP,
each with the ``enrichment`` JSON that cowrieprocessor's enrichment sources leave.

Pure functions of their arguments and of the random stream they are given: the
generator decides which ASN, country, counts and times an IP has; these spell the row.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

from cowrieprocessor.demo.reference import COUNTRIES, Asn, ip_types, spur
from cowrieprocessor.demo.rows import (
    DAY,
    JSON,
    SECOND,
    WINDOW,
    Format,
    Row,
    cowrie_ts,
    day,
)


def asn_row(
    fmt: Format, rng: random.Random, a: Asn, ips: int, sessions: int, first: int, last: int
) -> Row:
    """The ``asn_inventory`` row of ``a``, which holds ``ips`` IPs with ``sessions``
    sessions between ``first`` and ``last`` (an ASN without IPs gets times of its own)."""
    if not ips:
        first = int(rng.random() * WINDOW)
        last = first + rng.randrange(DAY, 60 * DAY)
    enriched = last + rng.randrange(SECOND, 3 * DAY)
    code, registry = COUNTRIES[a.country][0], COUNTRIES[a.country][4]
    allocated = f"{rng.randrange(1996, 2024)}-{rng.randrange(1, 13):02d}-01"
    enrichment = (
        f'{{"source":"cymru","asn":{a.number},"description":{a.name_json},'
        f'"country":"{code}","registry":"{registry.lower()}",'
        f'"allocated":"{allocated}","prefix_count":{rng.randrange(1, 4000)}}}'
    )
    return (
        a.number, a.name, code, registry, a.kind, fmt.ts(first), fmt.ts(last), ips, sessions,
        enrichment, fmt.ts(enriched), fmt.ts(first), fmt.ts(enriched),
    )  # fmt: skip


def ip_row(
    fmt: Format,
    r: Callable[[], float],
    ip: str,
    asn: Asn,
    country: int,
    first: int,
    last: int,
    count: int,
) -> Row:
    """The ``ip_inventory`` row of ``ip``: announced by ``asn``, placed in ``country``
    (an index into :data:`COUNTRIES`) by MaxMind, with ``count`` sessions between
    ``first`` and ``last``."""
    code, cname, city, _w, _registry, lat, lon = COUNTRIES[country]
    asn_code, registry = COUNTRIES[asn.country][0], COUNTRIES[asn.country][4]
    enriched: int | None = last + SECOND + int(r() * 3 * DAY)
    if r() < 0.005:
        enriched = None
    stamp = cowrie_ts(last if enriched is None else enriched)
    types = ip_types(r, asn.kind)
    prefix = _prefix(ip)
    name = asn.name_json

    maxmind = (
        f'"maxmind":{{"country":"{code}","country_name":"{cname}",'
        f'"city":{"null" if r() < 0.4 else JSON.encode(city)},'
        f'"latitude":{lat + 6 * r() - 3:.4f},"longitude":{lon + 6 * r() - 3:.4f},'
        f'"accuracy_radius":{(5, 20, 50, 100, 500, 1000)[int(r() * 6)]},'
        f'"asn":{asn.number},"asn_org":{name}}}'
    )
    cymru = (
        f'"cymru":{{"asn":{asn.number},"asn_name":{name},"country":"{asn_code}",'
        f'"prefix":"{prefix}","registry":"{registry.lower()}"}}'
    )
    dshield = (
        f'"dshield":{{"ip":{{"asn":"{asn.number}","asname":{name},'
        f'"ascountry":"{asn_code}","count":"{count}",'
        f'"attacks":"{count * (1 + int(r() * 5))}","network":"{prefix}"}}}}'
    )
    parts: list[str] = []
    roll = r()
    if roll < 0.90:  # MaxMind knows the country; usually the others too
        parts.append(maxmind)
        if r() < 0.85:
            parts.append(cymru)
        if r() < 0.7:
            parts.append(dshield)
    elif roll < 0.95:  # no MaxMind record: Cymru's registration country
        parts.append(cymru)
        if r() < 0.5:
            parts.append(dshield)
    elif roll < 0.99:  # DShield only
        parts.append(dshield)
    elif r() < 0.5:  # no country anywhere: geo_country becomes 'XX'
        parts.append(f'"maxmind":{{"country":null,"asn":{asn.number},"asn_org":{name}}}')
    scanner = False
    if roll < 0.99 or r() < 0.5:
        if r() < 0.5:
            parts.append(spur(r, asn, types))
        if r() < 0.65:
            scanner = r() < 0.6
            label = "malicious" if scanner and r() < 0.7 else "unknown"
            parts.append(
                f'"greynoise":{{"noise":{"true" if scanner else "false"},"riot":false,'
                f'"classification":"{label}","last_seen":"{day(last)}"}}'
            )
        parts.append(
            '"validation":{"is_bogon":false,"is_private":false,"is_reserved":false,'
            f'"checked_at":"{stamp}"}}'
        )
    enrichment = "{" + ",".join(parts) + "}"
    return (
        ip, asn.number, fmt.ts(enriched), fmt.ts(first), fmt.ts(last), count, enrichment,
        fmt.ts(enriched), "2.2", fmt.ip_types(types), fmt.flag(scanner), fmt.false,
        fmt.ts(first), fmt.ts(last if enriched is None else enriched),
    )  # fmt: skip


def _prefix(ip: str) -> str:
    """The announced prefix an IP sits in, as the enrichment sources report it."""
    if ":" in ip:
        return str(ipaddress.IPv6Network(f"{ip}/32", strict=False))
    return ip.rsplit(".", 2)[0] + ".0.0/16"
