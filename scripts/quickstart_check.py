#!/usr/bin/env python3
"""Run the README's two quickstart commands exactly as written, in a clean clone, and check them.

1. The first (install + ``refresher demo``) must onboard accounts and rotate their tokens: it runs until
   the demo has been up for ``--watch`` seconds, then gets Ctrl-C (SIGINT), as a user would press it, and
   its closing line must report rotations and zero refresh-token reuses.
2. The second (the test command) must pass; its exit status is this script's.

``.ci/run`` calls this, so the commands a newcomer copies from the README are the ones CI proves.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands(readme: str) -> list[str]:
    """The first two ``sh`` code blocks of the Quickstart section."""
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    if len(blocks) < 2:
        sys.exit("quickstart_check: README's Quickstart section must hold two ```sh blocks")
    return [" ".join(line.strip() for line in b.strip().splitlines()) for b in blocks[:2]]


def clean_clone(target: Path) -> Path:
    if (ROOT / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True)  # noqa: S603,S607
    else:  # a source tree without git: copy what a clone would hold
        skip = shutil.ignore_patterns(".venv*", "__pycache__", "*.db*", ".refresher-demo")
        shutil.copytree(ROOT, target, ignore=skip)
    return target


def run_demo(command: str, cwd: Path, watch: float, install_timeout: float) -> None:
    log_path = cwd / "quickstart-demo.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(  # noqa: S602 - the README's command, exactly as written, is the point
            command, shell=True, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        started = None
        deadline = time.monotonic() + install_timeout
        try:
            while proc.poll() is None:
                text = log_path.read_text(errors="replace")
                if started is None and "refresher demo: sandbox on" in text:
                    started = time.monotonic()
                    print(f"quickstart_check: demo is up; watching it for {watch:.0f} s", flush=True)
                if started is not None and time.monotonic() - started >= watch:
                    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
                    proc.wait(60)
                    break
                if started is None and time.monotonic() > deadline:
                    raise SystemExit("quickstart_check: the demo did not start in time")
                time.sleep(1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log_path.read_text(errors="replace")
    print("\n".join(text.splitlines()[-25:]))
    match = re.search(r"demo finished: (\d+) refreshes, each answered with a new refresh token .*?; (\d+) reuses", text)
    if match is None:
        raise SystemExit(f"quickstart_check: the demo did not finish cleanly (exit {proc.returncode})")
    rotations = int(match[1])
    reuses = int(match[2])
    if rotations == 0 or reuses != 0:
        raise SystemExit(f"quickstart_check: demo made {rotations} rotations and {reuses} reuses")
    if "Traceback" in text:
        raise SystemExit("quickstart_check: a traceback in the demo's output")
    print(f"quickstart_check: demo OK ({rotations} rotations, 0 reuses)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watch", type=float, default=110.0, help="seconds to let the demo run")
    parser.add_argument("--install-timeout", type=float, default=900.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args()
    first, second = quickstart_commands((ROOT / "README.md").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="refresher-quickstart-"))
    try:
        clone = clean_clone(tmp / "refresher")
        print(f"quickstart_check: clean clone in {clone}\n$ {first}", flush=True)
        run_demo(first, clone, args.watch, args.install_timeout)
        print(f"$ {second}", flush=True)
        env = {**os.environ}
        code = subprocess.call(second, shell=True, cwd=clone, env=env)  # noqa: S602 - as written in the README
        print(f"quickstart_check: test command exited {code}", flush=True)
        return code
    finally:
        if args.keep:
            print(f"quickstart_check: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
