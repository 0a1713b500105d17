"""A faithful local stand-in for the platforms' authorization servers, with fault injection.

Start it with ``refresher sandbox`` or, in-process, ``async with SandboxServer() as sandbox``.
"""

from refresher.sandbox.apps import DEFAULT_LIFETIMES, SANDBOX_CREDENTIALS, Lifetimes
from refresher.sandbox.core import SandboxRejection, SandboxState, Subject
from refresher.sandbox.faults import FaultPlan, FaultSpecError
from refresher.sandbox.runner import SandboxServer
from refresher.sandbox.server import SandboxPlatform, build_app

__all__ = [
    "DEFAULT_LIFETIMES",
    "SANDBOX_CREDENTIALS",
    "FaultPlan",
    "FaultSpecError",
    "Lifetimes",
    "SandboxPlatform",
    "SandboxRejection",
    "SandboxServer",
    "SandboxState",
    "Subject",
    "build_app",
]
