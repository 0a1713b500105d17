"""The platform-neutral part of the sandbox: token chains, consent tickets, counters.

The sandbox stands in for the platforms' authorization servers on loopback. Each platform module in
this package speaks its platform's wire protocol (paths, parameters, signatures, error envelopes) and
keeps its tokens here, so every platform shares one notion of "a grant", "a rotation", "a reuse" and
"a fault". Rotation is strict on every platform: once a refresh token has been used, it is rejected
and the attempt is counted as a reuse — the harshest behaviour any of them documents, so a client that
survives the sandbox survives the real thing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from refresher.domain import Clock, SystemClock
from refresher.sandbox.apps import DEFAULT_LIFETIMES, SANDBOX_CREDENTIALS, Lifetimes, app_id_of, secret_of
from refresher.sandbox.faults import FaultPlan

# ------------------------------------------------------------------------------------- tokens & grants


class SandboxRejection(Exception):
    """Why the sandbox refuses a code or a token; the platform module turns ``reason`` into its error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # unknown | expired | used | reused | revoked | mismatch


@dataclass
class Subject:
    """One authorized thing: a shop, a merchant, a seller, a user."""

    id: str
    kind: str
    name: str
    region: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chain:
    """One grant's line of token sets: each refresh rotates both tokens."""

    id: int
    platform: str
    app_id: str
    subjects: list[Subject]
    scopes: list[str]
    access_token: str
    refresh_token: str
    access_expires_at: dt.datetime
    refresh_expires_at: dt.datetime
    granted_at: dt.datetime
    previous_access: str | None = None
    previous_access_until: dt.datetime | None = None
    revoked: bool = False
    rotations: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """What the admin endpoints show: never a token, only a short fingerprint of it."""
        return {
            "id": self.id,
            "platform": self.platform,
            "app_id": self.app_id,
            "subjects": [s.__dict__ for s in self.subjects],
            "scopes": self.scopes,
            "access_fingerprint": fingerprint(self.access_token),
            "refresh_fingerprint": fingerprint(self.refresh_token),
            "access_expires_at": self.access_expires_at.isoformat(),
            "refresh_expires_at": self.refresh_expires_at.isoformat(),
            "revoked": self.revoked,
            "rotations": self.rotations,
        }


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass
class PendingCode:
    code: str
    platform: str
    app_id: str
    subjects: list[Subject]
    scopes: list[str]
    expires_at: dt.datetime
    redirect_uri: str | None = None
    code_challenge: str | None = None
    used: bool = False
    chain_id: int | None = None  # set when redeemed, so a resent code can find the grant


@dataclass
class ConsentTicket:
    """A seller looking at the consent page: what the platform's authorize endpoint received."""

    id: str
    platform: str
    app_id: str
    redirect_uri: str
    state: str | None
    scopes: list[str]
    params: dict[str, str]


class SandboxState:
    """Everything the sandbox remembers, shared by the platform modules. Single event loop, no locks."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        lifetimes: Mapping[str, Lifetimes] | None = None,
        credentials: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
        faults: FaultPlan | None = None,
        auto_approve: bool = False,
        fault_delay: float = 30.0,
        seed: int | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.lifetimes = dict(DEFAULT_LIFETIMES)
        self.lifetimes.update(lifetimes or {})
        self.apps: dict[str, dict[str, str]] = {p: {} for p in DEFAULT_LIFETIMES}
        # Everything else an app's entry said (service_id, desktop, redirect_uri …), for platform modules
        # whose protocol depends on registration details the wire does not carry.
        self.app_details: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in DEFAULT_LIFETIMES}
        for platform, creds in SANDBOX_CREDENTIALS.items():
            self.add_app(platform, creds)
        for platform, many in (credentials or {}).items():
            for entry in many:
                self.add_app(platform, entry)
        self.faults = faults or FaultPlan()
        self.auto_approve = auto_approve
        self.fault_delay = fault_delay
        self.counters: Counter[str] = Counter()
        self.chains: dict[int, Chain] = {}
        self.codes: dict[str, PendingCode] = {}
        self.tickets: dict[str, ConsentTicket] = {}
        self._by_access: dict[str, int] = {}
        self._by_refresh: dict[str, int] = {}
        self._used_refresh: dict[str, int] = {}
        self._latest: dict[tuple[str, str], int] = {}  # (platform, subject id) -> its newest chain
        self._next_chain = 1
        self._random = random.Random(seed)
        self._issued_ids: set[str] = set()

    # -- apps

    def add_app(self, platform: str, credentials: Mapping[str, Any]) -> None:
        self.apps.setdefault(platform, {})[app_id_of(platform, credentials)] = secret_of(credentials)
        self.app_details.setdefault(platform, {})[app_id_of(platform, credentials)] = dict(credentials)

    def secret(self, platform: str, app_id: str) -> str | None:
        return self.apps.get(platform, {}).get(app_id)

    def count(self, platform: str, name: str) -> None:
        self.counters[f"{platform}.{name}"] += 1

    def new_id(self, digits: int = 9) -> str:
        """A fresh id, never one issued before: with 10,000 shops a random 9-digit id collides about one
        run in twenty, and a colliding shop id reads as a re-authorization that revokes another grant."""
        while True:
            candidate = str(self._random.randrange(10 ** (digits - 1), 10**digits))
            if candidate not in self._issued_ids:
                self._issued_ids.add(candidate)
                return candidate

    # -- consent

    def open_ticket(
        self,
        platform: str,
        app_id: str,
        redirect_uri: str,
        state: str | None,
        scopes: list[str],
        params: Mapping[str, str],
    ) -> ConsentTicket:
        ticket = ConsentTicket(secrets.token_urlsafe(12), platform, app_id, redirect_uri, state, scopes, dict(params))
        self.tickets[ticket.id] = ticket
        self.count(platform, "consent")
        return ticket

    def issue_code(
        self,
        platform: str,
        app_id: str,
        subjects: list[Subject],
        scopes: list[str],
        *,
        redirect_uri: str | None = None,
        code_challenge: str | None = None,
    ) -> PendingCode:
        code = PendingCode(
            code=secrets.token_hex(16),
            platform=platform,
            app_id=app_id,
            subjects=subjects,
            scopes=scopes,
            expires_at=self.clock.now() + self.lifetimes[platform].code,
            redirect_uri=redirect_uri,
            code_challenge=code_challenge,
        )
        self.codes[code.code] = code
        return code

    def redeem_code(self, platform: str, app_id: str, code: str) -> tuple[PendingCode, Chain]:
        pending = self.codes.get(code)
        if pending is None or pending.platform != platform:
            raise SandboxRejection("unknown")
        if pending.app_id != app_id:
            raise SandboxRejection("mismatch")
        if pending.used:
            self.count(platform, "code_reuse")
            raise SandboxRejection("used")
        if self.clock.now() >= pending.expires_at:
            raise SandboxRejection("expired")
        pending.used = True
        chain = self._new_chain(pending)
        pending.chain_id = chain.id
        self.count(platform, "token")
        return pending, chain

    def resend_code(self, platform: str, chain: Chain) -> PendingCode:
        """A fresh code for an existing grant (Shopee's get_token_by_resend_code recovery)."""
        code = self.issue_code(platform, chain.app_id, chain.subjects, chain.scopes)
        code.chain_id = chain.id
        return code

    def redeem_resent(self, platform: str, app_id: str, code: str) -> Chain:
        pending = self.codes.get(code)
        if pending is None or pending.chain_id is None or pending.used or pending.platform != platform:
            raise SandboxRejection("unknown")
        if self.clock.now() >= pending.expires_at:
            raise SandboxRejection("expired")
        pending.used = True
        chain = self.chains[pending.chain_id]
        if chain.revoked:
            raise SandboxRejection("revoked")
        self._rotate(chain)
        return chain

    # -- tokens

    def _tokens(self, platform: str) -> tuple[str, str]:
        prefix = {"shopee": "sp", "tiktok_shop": "tts", "lazada": "lz", "tiktok": "tk"}.get(platform, "sb")
        return f"{prefix}a_{secrets.token_hex(16)}", f"{prefix}r_{secrets.token_hex(16)}"

    def _new_chain(self, pending: PendingCode) -> Chain:
        now = self.clock.now()
        life = self.lifetimes[pending.platform]
        access, refresh = self._tokens(pending.platform)
        chain = Chain(
            id=self._next_chain,
            platform=pending.platform,
            app_id=pending.app_id,
            subjects=pending.subjects,
            scopes=pending.scopes,
            access_token=access,
            refresh_token=refresh,
            access_expires_at=now + life.access,
            refresh_expires_at=now + life.refresh,
            granted_at=now,
        )
        self._next_chain += 1
        self._add_chain(chain)
        return chain

    def _add_chain(self, chain: Chain) -> None:
        self.chains[chain.id] = chain
        self._by_access[chain.access_token] = chain.id
        self._by_refresh[chain.refresh_token] = chain.id
        for subject in chain.subjects:  # indexed: a scan of every chain per request was O(accounts)
            self._latest[(chain.platform, subject.id)] = chain.id

    def _rotate(self, chain: Chain) -> None:
        now = self.clock.now()
        life = self.lifetimes[chain.platform]
        self._by_refresh.pop(chain.refresh_token, None)
        self._used_refresh[chain.refresh_token] = chain.id
        if life.previous_access_grace:
            chain.previous_access = chain.access_token
            chain.previous_access_until = now + life.previous_access_grace
        else:
            self._by_access.pop(chain.access_token, None)
        access, refresh = self._tokens(chain.platform)
        chain.access_token, chain.refresh_token = access, refresh
        chain.access_expires_at = now + life.access
        if life.refresh_extends:
            chain.refresh_expires_at = now + life.refresh
        chain.rotations += 1
        self._by_access[access] = chain.id
        self._by_refresh[refresh] = chain.id

    def refresh(self, platform: str, app_id: str, refresh_token: str) -> Chain:
        """Rotate a chain; raises :class:`SandboxRejection` for an unknown, reused, expired or revoked token."""
        self.count(platform, "refresh")
        chain_id = self._by_refresh.get(refresh_token)
        if chain_id is None:
            if refresh_token in self._used_refresh:
                self.count(platform, "reuse")
                raise SandboxRejection("reused")
            raise SandboxRejection("unknown")
        chain = self.chains[chain_id]
        if chain.platform != platform:
            raise SandboxRejection("unknown")
        if chain.app_id != app_id:
            raise SandboxRejection("mismatch")
        if chain.revoked:
            raise SandboxRejection("revoked")
        if self.clock.now() >= chain.refresh_expires_at:
            raise SandboxRejection("expired")
        self._rotate(chain)
        self.count(platform, "rotated")
        return chain

    def refresh_subject(self, platform: str, app_id: str, refresh_token: str, subject_id: str) -> Chain:
        """Rotate for one subject of a grant (Shopee refreshes per shop_id / merchant_id).

        A grant covering several subjects (a Shopee main account) hands out one shared first pair;
        each subject's first refresh with it splits that subject off into a chain of its own. The
        shared refresh token then stays usable for the subjects that have not split yet, and is spent
        (a reuse) once every subject has, or when a subject that already split presents it again.
        """
        chain_id = self._by_refresh.get(refresh_token)
        chain = self.chains.get(chain_id) if chain_id is not None else None
        if chain is None or chain.platform != platform or len(chain.subjects) < 2:
            if chain is not None and chain.platform == platform and all(s.id != subject_id for s in chain.subjects):
                self.count(platform, "refresh")
                raise SandboxRejection("mismatch")
            return self.refresh(platform, app_id, refresh_token)
        self.count(platform, "refresh")
        subject = next((s for s in chain.subjects if s.id == subject_id), None)
        if subject is None or chain.app_id != app_id:
            raise SandboxRejection("mismatch")
        if chain.revoked:
            raise SandboxRejection("revoked")
        now = self.clock.now()
        if now >= chain.refresh_expires_at:
            raise SandboxRejection("expired")
        split: list[str] = chain.extra.setdefault("split", [])
        if subject_id in split:
            self.count(platform, "reuse")
            raise SandboxRejection("reused")
        split.append(subject_id)
        life = self.lifetimes[platform]
        access, refresh = self._tokens(platform)
        child = Chain(
            id=self._next_chain,
            platform=platform,
            app_id=app_id,
            subjects=[subject],
            scopes=list(chain.scopes),
            access_token=access,
            refresh_token=refresh,
            access_expires_at=now + life.access,
            refresh_expires_at=now + life.refresh if life.refresh_extends else chain.refresh_expires_at,
            granted_at=chain.granted_at,
            rotations=1,
            extra={"parent": chain.id},
        )
        self._next_chain += 1
        self._add_chain(child)
        if len(split) == len(chain.subjects):
            self._by_refresh.pop(refresh_token, None)
            self._used_refresh[refresh_token] = chain.id
        self.count(platform, "rotated")
        return child

    def check_access(self, platform: str, access_token: str) -> Chain:
        """The chain an access token belongs to, if it is valid right now."""
        chain_id = self._by_access.get(access_token)
        if chain_id is None:
            raise SandboxRejection("unknown")
        chain = self.chains[chain_id]
        if chain.platform != platform:
            raise SandboxRejection("unknown")
        if chain.revoked:
            raise SandboxRejection("revoked")
        now = self.clock.now()
        if access_token == chain.access_token:
            if now >= chain.access_expires_at:
                raise SandboxRejection("expired")
            return chain
        if chain.previous_access == access_token and chain.previous_access_until and now < chain.previous_access_until:
            return chain
        raise SandboxRejection("expired")

    def revoke(self, platform: str, subject_id: str | None = None, chain_id: int | None = None) -> int:
        revoked = 0
        for chain in self.chains.values():
            if chain.platform != platform:
                continue
            if chain_id is not None and chain.id != chain_id:
                continue
            if subject_id is not None and all(s.id != subject_id for s in chain.subjects):
                continue
            chain.revoked = True
            revoked += 1
        return revoked

    def find_chain(self, platform: str, subject_id: str) -> Chain | None:
        """The newest chain that holds the subject."""
        chain_id = self._latest.get((platform, subject_id))
        return None if chain_id is None else self.chains[chain_id]

    async def delay(self, seconds: float | None = None) -> None:
        await asyncio.sleep(self.fault_delay if seconds is None else seconds)
