"""Which worker process of a ``WORKERS`` > 1 gateway is which, read from ``/proc`` (Linux):
the supervisor's children, and the worker that holds the server end of a connection."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # the TCP state of a listening socket in /proc/net/tcp


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (zombies excluded)."""
    found = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in (PROC / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:
        pass
    return inodes


def _port(address: str) -> int:
    return int(address.rpartition(":")[2], 16)


def server_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server end of the loopback TCP connection from ``client_port``
    to ``server_port``."""
    for table in ("tcp", "tcp6"):
        for line in (PROC / "net" / table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state != LISTEN and _port(local) == server_port and _port(remote) == client_port:
                return inode
    return None


def serving_worker(workers: set[int], server_port: int, client_port: int) -> int | None:
    """The worker among ``workers`` holding the server end of the connection from
    ``client_port`` to ``server_port`` (None before it was accepted)."""
    inode = server_inode(server_port, client_port)
    if inode is None:
        return None
    return next((pid for pid in workers if inode in _socket_inodes(pid)), None)


def listening_workers(workers: set[int], port: int) -> set[int]:
    """The workers among ``workers`` holding a listening socket on ``port``."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for line in (PROC / "net" / table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and _port(fields[1]) == port:
                inodes.add(fields[9])
    return {pid for pid in workers if inodes & _socket_inodes(pid)}


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited and been reaped. Only then are its sockets surely
    closed: a killed process's main thread turns zombie before its other threads have
    exited, and those still hold its files."""
    return not (PROC / str(pid)).exists()
