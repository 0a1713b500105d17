"""Fault injection for the sandbox: which call fails, how, how often (``shopee:refresh:503@0.3|x2``)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from refresher.domain import ConfigError
from refresher.sandbox.apps import SANDBOX_CREDENTIALS

GENERIC_FAULTS = {"timeout", "500", "502", "503", "429", "html", "truncated", "empty", "slow", "big"}
# Faults whose shape depends on the platform's protocol; the platform module renders them. ``unlisted``
# answers with a well-formed error code no platform document lists (each module's UNLISTED_CODE).
PROTOCOL_FAULTS = {"revoked", "wrongtypes", "error200", "lost", "unlisted"}
FAULT_KINDS = GENERIC_FAULTS | PROTOCOL_FAULTS
FAULT_OPS = {"consent", "token", "refresh", "api"}
_FAULT_RE = re.compile(
    r"^(?P<platform>[a-z_*]+):(?P<op>[a-z*]+):(?P<kind>[a-z0-9]+)(?:@(?P<prob>[0-9.]+))?(?:\|x(?P<times>\d+))?$"
)


class FaultSpecError(ConfigError):
    """A fault spec (``--faults``, ``/_sandbox/faults``) that cannot be read; the message names the part."""


@dataclass
class FaultRule:
    platform: str
    op: str
    kind: str
    probability: float = 1.0
    remaining: int | None = None  # None: unlimited

    def matches(self, platform: str, op: str) -> bool:
        return self.platform in ("*", platform) and self.op in ("*", op) and self.remaining != 0


class FaultPlan:
    """Faults to inject, from a spec like ``shopee:refresh:503@0.3,lazada:token:html|x2``.

    ``platform:op:kind`` with an optional ``@probability`` and an optional ``|xN`` (at most N times).
    """

    def __init__(self, rules: Iterable[FaultRule] = (), seed: int | None = None) -> None:
        self.rules = list(rules)
        self._random = random.Random(seed)

    @classmethod
    def parse(cls, spec: str | None, seed: int | None = None) -> FaultPlan:
        rules: list[FaultRule] = []
        for part in (spec or "").split(","):
            part = part.strip()
            if not part:
                continue
            match = _FAULT_RE.match(part)
            if match is None:
                raise FaultSpecError(f"fault {part!r}: expected platform:op:kind[@probability][|xN]")
            kind, op = match["kind"], match["op"]
            if kind not in FAULT_KINDS:
                raise FaultSpecError(f"fault {part!r}: unknown kind {kind!r} (one of {', '.join(sorted(FAULT_KINDS))})")
            if op != "*" and op not in FAULT_OPS:
                raise FaultSpecError(
                    f"fault {part!r}: unknown operation {op!r} (one of {', '.join(sorted(FAULT_OPS))})"
                )
            platform = match["platform"]
            if platform != "*" and platform not in SANDBOX_CREDENTIALS:
                # A typo here would silently inject nothing and a fault test would pass for the wrong reason.
                known = ", ".join(["*", *sorted(SANDBOX_CREDENTIALS)])
                raise FaultSpecError(f"fault {part!r}: unknown platform {platform!r} (one of {known})")
            prob = float(match["prob"]) if match["prob"] else 1.0
            if not 0.0 <= prob <= 1.0:
                raise FaultSpecError(f"fault {part!r}: probability must be between 0 and 1")
            times = int(match["times"]) if match["times"] else None
            rules.append(FaultRule(match["platform"], op, kind, prob, times))
        return cls(rules, seed)

    def take(self, platform: str, op: str) -> str | None:
        """The fault to inject into this call, if any (consumes one use of a counted rule)."""
        for rule in self.rules:
            if rule.matches(platform, op) and self._random.random() < rule.probability:
                if rule.remaining is not None:
                    rule.remaining -= 1
                return rule.kind
        return None

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"platform": r.platform, "op": r.op, "kind": r.kind, "probability": r.probability, "remaining": r.remaining}
            for r in self.rules
        ]
