"""One run of the generator: :meth:`Generator.run` and its steps, in their one order.

Every step draws from random streams of its own (:class:`~.streams.Rngs`), but each
reads what the steps before it left behind, so the order is fixed:

1. :meth:`~Generator._place_ips`: each inventory IP's ASN, country and address family;
2. :meth:`~Generator._count_sessions`: replays the attack stream (the same one step 6
   reads, from a fresh copy) so each IP's session count and first / last times are
   known before any row is written;
3. :meth:`~Generator._write_asns`: an ASN's statistics are those of its IPs (1, 2);
4. :meth:`~Generator._write_ips`: the inventory rows (1, 2); keeps the IP strings;
5. :meth:`~Generator._draw_unmatched_ips`: later values of the bijections step 4 used,
   so never one of its IPs;
6. :meth:`~Generator._write_sessions`: the sessions and their raw events, over the IPs
   of steps 4 and 5, with the times step 2 counted.
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections.abc import Callable

from cowrieprocessor.demo.inventory import asn_row, ip_row
from cowrieprocessor.demo.reference import (
    COUNTRIES,
    COUNTRY_CUM,
    COUNTRY_RANGE,
    build_asns,
)
from cowrieprocessor.demo.rows import (
    ASN_TABLE,
    DAY,
    EVENT_TABLE,
    IP_TABLE,
    SECOND,
    SESSION_TABLE,
    WINDOW,
    Format,
    Row,
)
from cowrieprocessor.demo.sessions import SessionRows
from cowrieprocessor.demo.sink import Sink
from cowrieprocessor.demo.spec import DemoDataError, DemoResult, DemoSpec
from cowrieprocessor.demo.streams import (
    ZIPF_EXPONENT,
    AttackStream,
    IpStream,
    Rngs,
    Selection,
    SessionIds,
    Timeline,
)


class Generator:
    """Writes ``spec`` worth of rows through ``sink``; :meth:`run` does it all.

    ``check`` names the key kinds (``session``, ``ip``, ``asn``) whose table had rows at
    the start: each new key of that kind is looked up and, if taken, replaced by the
    next of its stream. ``salt`` is mixed into every random stream's name.
    """

    def __init__(
        self,
        spec: DemoSpec,
        sink: Sink,
        fmt: Format,
        chunk_size: int,
        check: dict[str, bool],
        salt: str,
    ) -> None:
        self.rng = Rngs(f"cowrie-demo/{spec.seed}{salt}")
        self.spec = spec
        self.sink = sink
        self.fmt = fmt
        self.chunk_size = chunk_size
        self.check = check  # key kinds whose table had rows: look every new key up
        self.rng_asn = self.rng("asn")
        self.rng_ipattr = self.rng("ip-attributes")
        self.rng_ip = self.rng("ip-rows")
        self.rng_sel = self.rng("select")
        self.rng_unmatched = self.rng("unmatched")
        self.ip_stream = IpStream(self.rng("ip-keys"))
        keys = self.rng("session-keys")
        self.session_ids = SessionIds(keys)
        self.ingest_tag = f"{keys.getrandbits(32):08x}"

        n = spec.sessions
        self.n_unmatched = round(n * spec.unmatched_fraction)
        self.n_raw_only = round(n * spec.raw_only_fraction)
        self.n_matched = n - self.n_unmatched
        n_asns = spec.asns or (max(10, round(spec.ips / 40)) if spec.ips else 0)
        self.asns = build_asns(self.rng_asn, n_asns)
        if spec.ips and not self.asns:
            raise DemoDataError("asns must be >= 1 when ips > 0")
        self.ip_asn = array("i")  # per inventory IP: index into self.asns
        self.ip_country = array("B")  # index into COUNTRIES (where MaxMind places it)
        self.ip_v6 = bytearray()
        self.ip_count = array("q")  # sessions of each IP, and their first / last times
        self.ip_first = array("q")
        self.ip_last = array("q")
        self.cum_weights: list[float] = []
        self.ip_strings: list[str] = []
        self.unmatched_pool: list[str] = []
        self.result = DemoResult(0, 0, 0, 0, 0, 0, 0.0)

    def run(self, on_progress: Callable[[int, int], None] | None = None) -> DemoResult:
        """Every step, in the order the module doc explains, inside the sink's load."""
        with self.sink.run():
            self._place_ips()
            self._count_sessions()
            self._write_asns()
            self._write_ips()
            self._draw_unmatched_ips()
            self._write_sessions(on_progress)
        return self.result

    # -- the plan ------------------------------------------------------------------------

    def _place_ips(self) -> None:
        """Give each IP its ASN (by the ASNs' weights), country and address family."""
        spec, rng = self.spec, self.rng_ipattr
        ips = spec.ips
        if ips:
            asn_cum = list(itertools.accumulate(a.weight for a in self.asns))
            asn_of = rng.choices(range(len(self.asns)), cum_weights=asn_cum, k=ips)
            self.ip_asn = array("i", asn_of)
        self.ip_country = array("B", bytes(ips))
        self.ip_v6 = bytearray(ips)
        r = rng.random
        for idx in range(ips):
            asn = self.asns[self.ip_asn[idx]]
            if r() < (0.35 if asn.kind == "hosting" else 0.04):  # hosted abroad
                self.ip_country[idx] = rng.choices(COUNTRY_RANGE, cum_weights=COUNTRY_CUM)[0]
            else:
                self.ip_country[idx] = asn.country
            self.ip_v6[idx] = r() < spec.ipv6_fraction

    def _count_sessions(self) -> None:
        """Replay the matched sessions to count each IP's and find its first / last times."""
        ips = self.spec.ips
        count = self.ip_count = array("q", bytes(8 * ips))
        first = self.ip_first = array("q", [2 * WINDOW]) * ips
        last = self.ip_last = array("q", [-1]) * ips
        self.cum_weights = list(
            itertools.accumulate(1.0 / (k + 1) ** ZIPF_EXPONENT for k in range(ips))
        )
        stream = AttackStream(self.rng, ips, self.n_matched, self.cum_weights)
        left = self.n_matched
        while left:
            k = min(self.chunk_size, left)
            left -= k
            draws, starts, ends = stream.take(k)
            for ip, s, e in zip(draws, starts, ends, strict=True):
                count[ip] += 1
                if s < first[ip]:
                    first[ip] = s
                if e > last[ip]:
                    last[ip] = e
        idle = self.rng("idle-ips")
        for idx in range(ips):
            if not count[idx]:  # more IPs than sessions: an IP without a session
                first[idx] = int(idle.random() * WINDOW)
                last[idx] = first[idx] + idle.randrange(SECOND, 30 * DAY)

    # -- the inventory -------------------------------------------------------------------

    def _write_asns(self) -> None:
        """One row per ASN, with its IPs' statistics; an ASN that exists is left as it is."""
        n = len(self.asns)
        ips = array("q", bytes(8 * n))
        sessions = array("q", bytes(8 * n))
        first = array("q", [2 * WINDOW]) * n
        last = array("q", [-1]) * n
        for idx, owner in enumerate(self.ip_asn):
            ips[owner] += 1
            sessions[owner] += self.ip_count[idx]
            first[owner] = min(first[owner], self.ip_first[idx])
            last[owner] = max(last[owner], self.ip_last[idx])
        rows: list[Row] = [
            asn_row(self.fmt, self.rng_asn, a, ips[i], sessions[i], first[i], last[i])
            for i, a in enumerate(self.asns)
        ]
        with self.sink.chunk():
            if self.check["asn"]:  # an ASN that exists already is reused as it is
                taken = self.sink.existing("asn", [row[0] for row in rows])
                rows = [row for row in rows if row[0] not in taken]
            self.sink.write(ASN_TABLE, rows)
        self.result.asns = len(rows)

    def _ip_string(self, idx: int) -> str:
        if self.ip_v6[idx]:
            return self.ip_stream.v6(COUNTRIES[self.ip_country[idx]][4])
        return self.ip_stream.v4()

    def _ip_row(self, idx: int, ip: str) -> Row:
        return ip_row(
            self.fmt, self.rng_ip.random, ip, self.asns[self.ip_asn[idx]],
            self.ip_country[idx], self.ip_first[idx], self.ip_last[idx], self.ip_count[idx],
        )  # fmt: skip

    def _fresh(self, kind: str, keys: list[str], regenerate: Callable[[int], str]) -> None:
        """Replace, in place, each key that exists already by the next of its stream."""
        if not self.check[kind]:
            return
        todo = list(range(len(keys)))
        while todo:
            taken = self.sink.existing(kind, [keys[i] for i in todo])
            todo = [i for i in todo if keys[i] in taken]
            for i in todo:
                keys[i] = regenerate(i)

    def _write_ips(self) -> None:
        """The inventory rows, in chunks; the IP strings are kept for the sessions."""
        ips = self.spec.ips
        step = max(1, self.chunk_size // 4)  # an IP row is ~4 times the size of a session's
        for lo in range(0, ips, step):
            hi = min(ips, lo + step)
            strings = [self._ip_string(idx) for idx in range(lo, hi)]

            def again(i: int, lo: int = lo) -> str:
                return self._ip_string(lo + i)

            with self.sink.chunk():
                self._fresh("ip", strings, again)
                rows = [self._ip_row(lo + i, ip) for i, ip in enumerate(strings)]
                self.sink.write(IP_TABLE, rows)
            self.ip_strings.extend(strings)
        self.result.ips = ips

    def _draw_unmatched_ips(self) -> None:
        """The IPs of the unmatched sessions: later values of the same bijections, so
        never one of the new inventory IPs; checked against rows that were there."""
        if not self.n_unmatched:
            return
        rng = self.rng_unmatched

        def unmatched_ip(_i: int) -> str:
            if rng.random() < self.spec.ipv6_fraction:
                country = rng.choices(COUNTRY_RANGE, cum_weights=COUNTRY_CUM)[0]
                return self.ip_stream.v6(COUNTRIES[country][4])
            return self.ip_stream.v4()

        pool = [unmatched_ip(i) for i in range(max(1, math.ceil(self.n_unmatched / 4)))]
        with self.sink.chunk():
            self._fresh("ip", pool, unmatched_ip)
        self.unmatched_pool = pool

    # -- sessions and their events -------------------------------------------------------

    def _write_sessions(self, on_progress: Callable[[int, int], None] | None) -> None:
        """The sessions in time order, ``chunk_size`` at a time, with their raw events."""
        spec = self.spec
        total = spec.sessions
        rows = SessionRows(
            self.rng, self.fmt, self.asns, self.ip_strings, self.ip_asn, self.ip_count,
            self.ingest_tag,
        )  # fmt: skip
        stream = AttackStream(self.rng, spec.ips, self.n_matched, self.cum_weights)
        unmatched_times = Timeline(self.rng("unmatched-time"), self.n_unmatched)
        selection = Selection(self.rng_sel, total, self.n_unmatched, self.n_raw_only)
        pick, pool = self.rng_unmatched.random, self.unmatched_pool
        done = 0
        while done < total:
            n = min(self.chunk_size, total - done)
            unmatched, raw_only = selection.take(n)
            n_un = sum(unmatched)
            matched = stream.take(n - n_un)
            u_ips = [pool[int(pick() ** 1.5 * len(pool))] for _ in range(n_un)]
            u_starts, u_ends = unmatched_times.take(n_un)
            ids = self.session_ids.take(n)
            with self.sink.chunk():
                self._fresh("session", ids, self.session_ids.next)
                sessions, events = rows.build(
                    ids, unmatched, raw_only, matched, (u_ips, u_starts, u_ends)
                )
                self.sink.write(SESSION_TABLE, sessions)
                self.sink.write(EVENT_TABLE, events)
            done += n
            self.result.sessions = done
            self.result.unmatched_sessions += n_un
            self.result.raw_only_sessions += sum(raw_only)
            self.result.raw_events += len(events)
            if on_progress is not None:
                on_progress(done, total)
