"""A running quantile estimate (the P² algorithm, Jain & Chlamtac 1985).

Five markers track the estimate in constant memory, so "top 10 % by 365-day spend"
needs no sort over all customers. The state is a small dict that can be stored.
"""

from __future__ import annotations

import math


class P2Quantile:
    def __init__(self, p: float = 0.9) -> None:
        if not 0 < p < 1:
            raise ValueError("p must be in (0, 1)")
        self.p = p
        self.count = 0
        self.q: list[float] = []
        self.n: list[int] = [0, 1, 2, 3, 4]
        self.np: list[float] = [0, 2 * p, 4 * p, 2 + 2 * p, 4]
        self.dn: list[float] = [0, p / 2, p, (1 + p) / 2, 1]

    def add(self, x: float) -> None:
        self.count += 1
        if len(self.q) < 5:
            self.q.append(x)
            self.q.sort()
            return
        q, n = self.q, self.n
        if x < q[0]:
            q[0] = x
            k = 0
        elif x >= q[4]:
            q[4] = x
            k = 3
        else:
            k = next(i for i in range(4) if q[i] <= x < q[i + 1])
        for i in range(k + 1, 5):
            n[i] += 1
        for i in range(5):
            self.np[i] += self.dn[i]
        for i in (1, 2, 3):
            d = self.np[i] - n[i]
            if (d >= 1 and n[i + 1] - n[i] > 1) or (d <= -1 and n[i - 1] - n[i] < -1):
                s = int(math.copysign(1, d))
                candidate = self._parabolic(i, s)
                if not q[i - 1] < candidate < q[i + 1]:
                    candidate = q[i] + s * (q[i + s] - q[i]) / (n[i + s] - n[i])
                q[i] = candidate
                n[i] += s

    def _parabolic(self, i: int, s: int) -> float:
        q, n = self.q, self.n
        return q[i] + s / (n[i + 1] - n[i - 1]) * (
            (n[i] - n[i - 1] + s) * (q[i + 1] - q[i]) / (n[i + 1] - n[i])
            + (n[i + 1] - n[i] - s) * (q[i] - q[i - 1]) / (n[i] - n[i - 1])
        )

    def value(self) -> float | None:
        if not self.q:
            return None
        if len(self.q) < 5:
            ordered = sorted(self.q)
            return ordered[min(len(ordered) - 1, int(self.p * len(ordered)))]
        return self.q[2]

    def to_dict(self) -> dict[str, object]:
        return {"p": self.p, "count": self.count, "q": self.q, "n": self.n, "np": self.np}

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> P2Quantile:
        est = cls(float(raw["p"]))  # type: ignore[arg-type]
        est.count = int(raw["count"])  # type: ignore[call-overload]
        est.q = [float(x) for x in raw["q"]]  # type: ignore[attr-defined]
        est.n = [int(x) for x in raw["n"]]  # type: ignore[attr-defined]
        est.np = [float(x) for x in raw["np"]]  # type: ignore[attr-defined]
        return est
