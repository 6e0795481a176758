"""Per-user rate limits: a token bucket each (C{--create-rate}, tokens)."""

from __future__ import annotations


class TokenBuckets:
    """
    One token bucket per key: C{rate} tokens a second, at most C{burst}
    held. A clock stepped back refills nothing (it owed no time). Keys whose
    bucket is full again are forgotten once there are more than C{most}.
    """

    def __init__(self, rate: float, burst: float, most: int = 10000) -> None:
        self.rate = rate
        self.burst = burst
        self._most = most
        #: Per key: (tokens, when last refilled).
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> float:
        """Take a token: 0.0, or (none taken) the seconds until there is one."""
        rate, burst = self.rate, self.burst
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - last) * rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / rate
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > self._most:
            self._buckets = {
                k: (t, when)
                for k, (t, when) in self._buckets.items()
                if t + (now - when) * rate < burst
            }
        return 0.0

    def giveBack(self, key: str) -> None:
        """Return the token C{key} took for something that was not done."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            tokens, when = bucket
            self._buckets[key] = (min(self.burst, tokens + 1), when)
