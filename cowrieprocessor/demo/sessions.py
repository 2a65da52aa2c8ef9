"""The session rows and their raw events, one chunk at a time.

:class:`SessionRows` holds what stays the same from one chunk to the next: lookup
tables of behaviours and session metadata (drawing a row from a table is cheaper than
drawing ten values), the inventory IPs, the offsets reached in each day's log file,
and the run's ingest tag. The generator decides, per session, its id, IP and times,
and whether it is unmatched or raw-only; :meth:`SessionRows.build` spells the rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from operator import itemgetter

from cowrieprocessor.demo.reference import (
    COMMANDS,
    COUNTRIES,
    DSHIELD_ERRORS,
    LOG_DIR,
    MIDDLE_EVENTS,
    PASSWORDS,
    URLHAUS,
    USERNAMES,
    Asn,
    behaviours,
    metadata,
)
from cowrieprocessor.demo.rows import (
    DAY,
    DAYS,
    SECOND,
    SORTED_JSON,
    Format,
    Row,
    cowrie_ts,
    day,
)
from cowrieprocessor.demo.streams import Rngs

_arrival = itemgetter(15, 0)  # a session row's created_at, then its id


class SessionRows:
    """Builds ``session_summaries`` and ``raw_events`` rows for the sessions of one run."""

    def __init__(
        self,
        rng: Rngs,
        fmt: Format,
        asns: Sequence[Asn],
        ip_strings: Sequence[str],
        ip_asn: Sequence[int],
        ip_count: Sequence[int],
        ingest_tag: str,
    ) -> None:
        self.fmt = fmt
        self.rng = rng("session-rows")
        self.profiles = behaviours(rng("behaviours"), fmt)
        self.metas = metadata(rng("metadata"))
        self.asn_dshield = [  # the start of the "dshield" section, per ASN
            f'"dshield":{{"ip":{{"asn":"{a.number}","asname":{a.name_json},'
            f'"ascountry":"{COUNTRIES[a.country][0]}",'
            for a in asns
        ]
        self.ip_strings, self.ip_asn, self.ip_count = ip_strings, ip_asn, ip_count
        self.ingest_tag = ingest_tag
        self.file_offsets: dict[str, int] = {}  # bytes written to each day's log file

    def build(
        self,
        ids: list[str],
        unmatched: list[bool],
        raw_only: list[bool],
        matched: tuple[list[int], list[int], list[int]],
        others: tuple[list[str], list[int], list[int]],
    ) -> tuple[list[Row], list[Row]]:
        """One chunk of session rows (in arrival order) and the raw events that go with them."""
        fmt, r = self.fmt, self.rng.random
        ts, flagged, not_flagged = fmt.ts, fmt.true, fmt.false
        profiles, metas, asn_dshield = self.profiles, self.metas, self.asn_dshield
        n_profiles, n_metas = len(profiles), len(metas)
        ip_strings, ip_asn, ip_count = self.ip_strings, self.ip_asn, self.ip_count
        days, log_dir = DAYS, LOG_DIR
        m_ips, m_starts, m_ends = matched
        u_ips, u_starts, u_ends = others
        sessions: list[Row] = []
        events: list[Row] = []
        mi = ui = 0
        for k, sid in enumerate(ids):
            if unmatched[k]:
                ip, start, end = u_ips[ui], u_starts[ui], u_ends[ui]
                ui += 1
                dshield = DSHIELD_ERRORS[int(r() * len(DSHIELD_ERRORS))]
            else:
                idx = m_ips[mi]
                ip, start, end = ip_strings[idx], m_starts[mi], m_ends[mi]
                mi += 1
                seen = ip_count[idx]
                dshield = f'{asn_dshield[ip_asn[idx]]}"count":"{seen}","attacks":"{3 * seen}"}}}}'
            count, commands, downloads, logins, injections, keys, vt, risk = profiles[
                int(r() * n_profiles)
            ]
            protocol, sensor, client, meta = metas[int(r() * n_metas)]
            roll = r()
            if roll < 0.2:
                dshield += URLHAUS[roll < 0.16]
            enrichment: str | None
            if raw_only[k]:  # the canonical IP is known only from raw_events
                roll = r()
                if roll < 0.25:
                    enrichment = None
                elif roll < 0.5:
                    enrichment = "{}"
                elif roll < 0.75:
                    enrichment = '{"session_metadata":{}}'
                else:
                    enrichment = f'{{"session_metadata":{{{meta}}},{dshield}}}'
                n_events = 1 + int(r() * 4)
            else:
                enrichment = f'{{"session_metadata":{{"source_ip":"{ip}",{meta}}},{dshield}}}'
                roll = r()
                n_events = 1 + int(roll * 60) if roll < 0.05 else 0  # 5%: 1-3 events
            if n_events:
                self._events(sid, ip, start, end, n_events, sensor, protocol, client, events)
                count = max(count, n_events)
            d0, d1 = start // DAY, end // DAY
            if d0 == d1:
                files = f'["{log_dir}{days[d0]}"]'
            else:
                files = f'["{log_dir}{days[d0]}","{log_dir}{days[d1]}"]'
            created = ts(end + SECOND + int(r() * 7200 * SECOND))  # the loader's next run
            sessions.append(
                (
                    sid, ts(start), ts(end), count, commands, downloads, logins, injections,
                    keys, vt, flagged if r() < 0.3 else not_flagged, risk, protocol, files,
                    enrichment, created, created,
                )
            )  # fmt: skip
        # In arrival order, as the loader writes them (``created_at``, its next run): the
        # field's pages hold sessions of neighbouring times and random ids, so a range
        # of ids touches rows on many pages, never whole pages (docs/performance.md).
        sessions.sort(key=_arrival)
        return sessions, events

    def _events(
        self,
        sid: str,
        ip: str,
        start: int,
        end: int,
        n: int,
        sensor: str,
        protocol: str,
        client: str | None,
        out: list[Row],
    ) -> None:
        """Append the ``n`` raw events of one session to ``out``: the connection first,
        at ``start``; the close last; written out of time order for about 10%."""
        fmt, rng = self.fmt, self.rng
        span = max(end - start, 1_000 * n)
        # strictly increasing; the first one is the connection, at first_event_at
        times = [start] + [
            start + (span * k) // n + int(rng.random() * (span // (2 * n))) for k in range(1, n)
        ]
        kinds = ["cowrie.session.connect"]
        if n >= 2:
            kinds += [rng.choice(MIDDLE_EVENTS) for _ in range(n - 2)]
            kinds.append("cowrie.session.closed")
        rows: list[Row] = []
        for kind, at in zip(kinds, times, strict=True):
            payload: dict[str, object] = {
                "eventid": kind,
                "session": sid,
                "src_ip": ip,
                "sensor": sensor,
                "timestamp": cowrie_ts(at),
            }
            if kind == "cowrie.session.connect":
                port = 22 if protocol == "ssh" else 23
                src_port = rng.randrange(1024, 65536)
                payload |= {
                    "src_port": src_port,
                    "dst_ip": "10.0.0.4",
                    "dst_port": port,
                    "protocol": protocol,
                    "message": f"New connection: {ip}:{src_port} (10.0.0.4:{port}) "
                    f"[session: {sid}]",
                }
            elif kind == "cowrie.client.version":
                version = client or "SSH-2.0-Go"
                payload |= {"version": version, "message": f"Remote SSH version: {version}"}
            elif kind == "cowrie.client.kex":
                payload |= {
                    "hassh": f"{rng.getrandbits(128):032x}",
                    "message": "SSH client hassh fingerprint",
                }
            elif kind in ("cowrie.login.failed", "cowrie.login.success"):
                user, password = rng.choice(USERNAMES), rng.choice(PASSWORDS)
                outcome = "failed" if kind.endswith("failed") else "succeeded"
                payload |= {
                    "username": user,
                    "password": password,
                    "message": f"login attempt [{user}/{password}] {outcome}",
                }
            elif kind == "cowrie.command.input":
                command = rng.choice(COMMANDS)
                payload |= {"input": command, "message": f"CMD: {command}"}
            else:
                duration = round((at - start) / SECOND, 1)
                payload |= {
                    "duration": duration,
                    "message": f"Connection lost after {duration} seconds",
                }
            text = SORTED_JSON.encode(payload)
            date = day(at)
            source = LOG_DIR + date
            offset = self.file_offsets.get(source, 0)
            self.file_offsets[source] = offset + len(text.encode()) + 1
            ingest_at = (at // DAY + 1) * DAY + 300 * SECOND  # the next night's ingest
            digest = hashlib.sha256(text.encode()).hexdigest()
            rows.append(
                (
                    f"{date}-{self.ingest_tag}", fmt.ts(ingest_at), source, offset, text, digest,
                    sid, kind, fmt.ts(at),
                )
            )  # fmt: skip
        if n >= 2 and rng.random() < 0.1:
            rng.shuffle(rows)  # ingested out of order: ids do not follow the timestamps
        out.extend(rows)
