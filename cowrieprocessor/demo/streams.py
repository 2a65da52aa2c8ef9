"""Where the randomness comes from, and how keys stay unique without remembering them.

* :class:`Rngs`: one independent, reproducible ``random.Random`` per purpose, named
  under the run's seed (so drawing more from one stream never shifts another);
* keyed bijections (:class:`SessionIds`, :class:`IpStream`): a counter through a keyed
  mixer gives random-looking keys that can never repeat within a run;
* :class:`Timeline` and :class:`AttackStream`: the sessions' start times and IPs, in
  time order, streamed in O(1) memory and replayable from the seed;
* :class:`Selection`: which sessions are unmatched or raw-only (exact counts).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import random
import statistics

from cowrieprocessor.demo.reference import V6_PREFIX16
from cowrieprocessor.demo.rows import SECOND, WINDOW

# --- keyed bijections: unique, random-looking keys in O(1) memory ---------------------

_M32 = (1 << 32) - 1
_M48 = (1 << 48) - 1
_M64 = (1 << 64) - 1


def _mix32(x: int, k1: int, k2: int) -> int:
    x = (x ^ k1) & _M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    x = ((x ^ (x >> 16)) * 0x2C1B3C6D) & _M32
    x ^= x >> 15
    return (x + k2) & _M32


def _mix48(x: int, k1: int, k2: int) -> int:
    x = (x ^ k1) & _M48
    x = ((x ^ (x >> 23)) * 0xFF51AFD7ED55) & _M48
    x = ((x ^ (x >> 21)) * 0xC4CEB9FE1A85) & _M48
    x ^= x >> 24
    return (x + k2) & _M48


def _mix64(x: int, k1: int, k2: int) -> int:
    x = (x ^ k1) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return (x + k2) & _M64


_BOGON_FIRST_OCTETS = frozenset({0, 10, 127, *range(224, 256)})
_BOGON_16 = frozenset({(169 << 8) | 254, (192 << 8) | 168})
_BOGON_24 = frozenset({(192 << 16) | 0, (192 << 16) | 2, (198 << 16) | (51 << 8) | 100,
                       (203 << 16) | 113})  # fmt: skip


def _is_bogon(x: int) -> bool:
    """Private, shared, loopback, link-local, benchmark, documentation, multicast, ..."""
    return (
        (x >> 24) in _BOGON_FIRST_OCTETS
        or (x >> 16) in _BOGON_16
        or (x >> 20) == (172 << 4) | 1  # 172.16.0.0/12
        or (x >> 22) == (100 << 2) | 1  # 100.64.0.0/10
        or (x >> 17) == (198 << 7) | 9  # 198.18.0.0/15
        or (x >> 8) in _BOGON_24
    )


class SessionIds:
    """Session ids, 12 lower-case hex digits: a counter through a keyed 48-bit bijection."""

    def __init__(self, rng: random.Random) -> None:
        self._keys = (rng.getrandbits(48), rng.getrandbits(48))
        self._counter = 0

    def next(self, _i: int = 0) -> str:
        """The next id (``_i`` is ignored: the signature of a key regenerator)."""
        value = _mix48(self._counter, *self._keys)
        self._counter += 1
        return f"{value:012x}"

    def take(self, n: int) -> list[str]:
        k1, k2 = self._keys
        first = self._counter
        self._counter += n
        return [f"{_mix48(c, k1, k2):012x}" for c in range(first, first + n)]


class IpStream:
    """Distinct public IPs: a counter through a keyed bijection (bogons skipped)."""

    def __init__(self, rng: random.Random) -> None:
        self._k32 = (rng.getrandbits(32), rng.getrandbits(32))
        self._k64 = (rng.getrandbits(64), rng.getrandbits(64))
        self._v4 = 0
        self._v6 = 0

    def v4(self) -> str:
        while True:
            x = _mix32(self._v4, *self._k32)
            self._v4 += 1
            if not _is_bogon(x):
                return f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}"

    def v6(self, registry: str) -> str:
        # Unique through the interface id alone (a bijection of the counter); the
        # prefix only makes the address look like one of the registry's.
        iid = _mix64(self._v6, *self._k64)
        self._v6 += 1
        prefixes = V6_PREFIX16[registry]
        top = prefixes[iid % len(prefixes)]
        net = (iid >> 13) & 0xFFFF_FFFF_FFFF
        return ipaddress.IPv6Address((top << 112) | (net << 64) | iid).compressed


# --- time and attack streams ------------------------------------------------------------

ZIPF_EXPONENT = 0.9
_DURATION_MU = 3.0  # log-normal session duration: median ~20 s, mean ~1 min, long tail
_DURATION_SIGMA = 1.5
_MAX_DURATION = 6 * 3600 * SECOND


@functools.cache
def _durations() -> tuple[int, ...]:
    """Quantiles of the log-normal session duration (a lookup beats gauss() + exp())."""
    law = statistics.NormalDist(_DURATION_MU, _DURATION_SIGMA)
    n = 4096
    return tuple(
        min(int(math.exp(law.inv_cdf((i + 0.5) / n)) * SECOND), _MAX_DURATION) + 200_000
        for i in range(n)
    )


class Timeline:
    """Start and end times of ``total`` sessions, in ascending order of start.

    The starts are the order statistics of ``total`` uniform draws over the year,
    produced one after the other (a Poisson-like arrival process, streamed in O(1)
    memory): the loader ingests in time order, and so does this, which also keeps
    the time indexes' inserts at their right-hand edge.
    """

    def __init__(self, rng: random.Random, total: int) -> None:
        self._uniform = rng.random
        self._left = total
        self._at = 0.0  # fraction of the window reached

    def take(self, k: int) -> tuple[list[int], list[int]]:
        uniform, durations, at, left = self._uniform, _durations(), self._at, self._left
        n = len(durations)
        starts: list[int] = []
        ends: list[int] = []
        for _ in range(k):  # one start and one duration after the other, whatever k is
            at += (1.0 - at) * (1.0 - uniform() ** (1.0 / left))
            left -= 1
            start = int(at * WINDOW)
            starts.append(start)
            ends.append(start + durations[int(uniform() * n)])
        self._at, self._left = at, left
        return starts, ends


class Rngs:
    """Independent, reproducible random streams, one per purpose, named under ``base``.

    String seeds are hashed with SHA-512, whatever ``PYTHONHASHSEED`` is.
    """

    def __init__(self, base: str) -> None:
        self.base = base

    def __call__(self, name: str) -> random.Random:
        return random.Random(f"{self.base}/{name}")


class AttackStream:
    """IP and times of the matched sessions, in order, replayable from the seed.

    The pre-pass and the real pass read it from two fresh instances, so the per-IP
    counts and first/last times computed up front match the sessions exactly. Each IP
    gets one session (spread evenly through the stream) when there are enough matched
    sessions; the others follow the Zipf-like weights.
    """

    def __init__(self, rng: Rngs, ips: int, matched: int, cum_weights: list[float]) -> None:
        self._draw = rng("ip-draw")
        self._time = Timeline(rng("matched-time"), matched)
        self._ips = ips
        self._matched = max(matched, 1)
        self._cum = cum_weights
        self._population = range(ips)
        self._j = 0

    def take(self, k: int) -> tuple[list[int], list[int], list[int]]:
        draws = self._draw.choices(self._population, cum_weights=self._cum, k=k)
        ips, total, j0 = self._ips, self._matched, self._j
        if ips >= total:  # no more sessions than IPs: each session covers the next IP
            for t in range(k):
                draws[t] = ((j0 + t) * ips) // total
        else:  # IP c gets its own session at position ceil(c * total / ips)
            c = (j0 * ips) // total
            while (j := -(-c * total // ips)) < j0 + k:
                if j >= j0:
                    draws[j - j0] = c
                c += 1
        self._j = j0 + k
        starts, ends = self._time.take(k)
        return draws, starts, ends


class Selection:
    """Which sessions are unmatched and which raw-only: exact counts at random places.

    Selection sampling, one draw per session and kind: session ``i`` of ``total`` is
    chosen with probability (still to choose) / (sessions left), so exactly ``unmatched``
    and ``raw_only`` sessions are chosen, independently of each other.
    """

    def __init__(self, rng: random.Random, total: int, unmatched: int, raw_only: int) -> None:
        self._draw = rng.random
        self._total = total
        self._done = 0
        self._unmatched = unmatched  # still to choose
        self._raw_only = raw_only

    def take(self, n: int) -> tuple[list[bool], list[bool]]:
        """The flags of the next ``n`` sessions: (unmatched, raw_only)."""
        sel, total = self._draw, self._total
        u_left, r_left = self._unmatched, self._raw_only
        unmatched: list[bool] = []
        raw_only: list[bool] = []
        for i in range(self._done, self._done + n):
            remaining = total - i
            u = sel() * remaining < u_left
            u_left -= u
            ro = sel() * remaining < r_left
            r_left -= ro
            unmatched.append(u)
            raw_only.append(ro)
        self._done += n
        self._unmatched, self._raw_only = u_left, r_left
        return unmatched, raw_only
