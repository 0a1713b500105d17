"""The ``refresher`` command line.

Every command takes ``-c/--config FILE`` (default ``$REFRESHER_CONFIG``, then ``./refresher.yaml``).
Bad input gives one clear line on stderr and exit code 2, never a traceback.
Commands live in small modules beside this one, grouped by the part of the system they drive.
"""

from __future__ import annotations

import sys

# Importing the command modules registers their commands on ``main``.
from refresher.cli import commands_accounts as _commands_accounts  # noqa: F401
from refresher.cli import commands_authorize as _commands_authorize  # noqa: F401
from refresher.cli import commands_config as _commands_config  # noqa: F401
from refresher.cli import commands_daemon as _commands_daemon  # noqa: F401
from refresher.cli import commands_onboarding as _commands_onboarding  # noqa: F401
from refresher.cli import commands_platform as _commands_platform  # noqa: F401
from refresher.cli import commands_sandbox as _commands_sandbox  # noqa: F401
from refresher.cli import commands_store as _commands_store  # noqa: F401
from refresher.cli import commands_tokens as _commands_tokens  # noqa: F401
from refresher.cli.common import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
