"""Whom a task's command runs as: the run-as user, resolved and checked before anything runs.

A task's ``<Credentials ref=...>`` names the POSIX user its command runs as:

- ``system`` (the default of a task that says nothing) means the agent's default run-as user,
  ``--run-as-default`` (``nobody`` unless told otherwise), which may never be root;
- any other name is that user (looked up with :mod:`pwd`, groups with
  :func:`os.getgrouplist`); ``root`` (or another name of uid 0) is the only way a command runs
  as root, and only because the signed task says so.

An agent that is not root can only run commands as itself: a task whose run-as user is someone
else fails with a clear error rather than running as the agent's own user. When the command
runs as another user, :func:`grant_read` gives that user's primary group read access to the
package's cached files (owner and group only, never others, never write). This module owns
those rules; :mod:`agent.runner` starts the process with the result.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from mcast.errors import UsageError

SYSTEM = "system"  # the task's run-as when it names none: the agent's default user
DEFAULT_USER = "nobody"


class RunAsError(UsageError):
    """The run-as user is unknown, root by default, or one this agent cannot switch to."""


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary one included
    home: str

    @property
    def is_self(self) -> bool:
        """Whether it is the user the agent runs as (nothing to switch)."""
        return self.uid == os.geteuid()


def lookup(name: str) -> RunAs:
    """The user ``name``, or RunAsError if this machine has none."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise RunAsError(f"run-as user {name!r} does not exist on this machine") from None
    groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)


def check_default(name: str) -> None:
    """Refuse a default run-as user that does not exist or is root (RunAsError)."""
    if lookup(name).uid == 0:
        raise RunAsError(
            f"the default run-as user {name!r} is root: a command runs as root only when its"
            " signed task says so"
        )


def resolve(credentials: str, default_user: str) -> RunAs:
    """The user a task with ``credentials`` runs as, checked for this agent: RunAsError if it
    is unknown, if the default resolves to root, or if the agent is not root and it is
    another user."""
    name = default_user if credentials in ("", SYSTEM) else credentials
    user = lookup(name)
    if credentials in ("", SYSTEM) and user.uid == 0:
        raise RunAsError(f"the default run-as user {name!r} is root; not run")
    if not user.is_self and os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        raise RunAsError(
            f"the task runs as {user.name!r} but the agent runs as {me!r} and cannot switch"
            " users (run the agent as root, or give the task the agent's own user)"
        )
    return user


def grant_read(root: Path, user: RunAs) -> None:
    """Let ``user`` read the package under ``root``: every directory and file gets the
    user's primary group, read (and search, or execute where the owner may execute) for the
    group, nothing for others, and no write for anyone but the owner. A no-op for the
    agent's own user."""
    if user.is_self:
        return
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [Path(dirpath, n) for n in dirnames + filenames]
    for path in paths:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        owner = stat.S_IMODE(st.st_mode) & 0o700
        group = 0o040 | ((owner & 0o100) >> 3) if not stat.S_ISDIR(st.st_mode) else 0o050
        os.chown(path, -1, user.gid, follow_symlinks=False)
        os.chmod(path, owner | group)
