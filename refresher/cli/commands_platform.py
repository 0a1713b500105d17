"""Platform commands: ``sign``, ``auth-url``, ``exchange``, ``refresh`` (filled in by the plugins work)."""

from __future__ import annotations
