"""Test hosts of the run's own: a network namespace made here, reached through a veth pair.

Servers started by tests listen on 127.0.0.1, except on these hosts, for the few things that
must not be loopback (the API server refuses loopback addresses in EndpointSlices). The
namespace's addresses are in TEST-NET-2 (198.51.100.0/24, RFC 5737, where nothing real is): a
/29 of it picked at random among the blocks this machine does not route yet, so that test runs
side by side do not meet, and checked to be routed into this namespace before anything is sent.

Loaded with ``pytest_plugins = ["tests.netns_hosts"]``. Needs root (``ip netns``); when a step
fails, the fixture fails and says which command and what it answered: it never skips. Whatever
happens, the veth pair and the namespace are removed at the end.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

TEST_NET_2 = ipaddress.ip_network("198.51.100.0/24")
BLOCK = 29  # 8 addresses: the host's end and up to five test hosts


@dataclass(frozen=True)
class NetnsHosts:
    """``addresses`` are the test hosts, all in network namespace ``netns``; ``gateway`` is this
    (the test's) side of the veth pair ``host_link``."""

    netns: str
    host_link: str
    gateway: str
    addresses: tuple[str, ...]

    @property
    def exec_prefix(self) -> list[str]:
        """Prefix for a command to run inside the namespace, i.e. on the test hosts."""
        return ["ip", "netns", "exec", self.netns]


def _ip(*args: str) -> str:
    """``ip ARGS``'s output; any failure fails the test (setup) with the command and its stderr."""
    command = ["ip", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"test hosts: `{shlex.join(command)}` could not run: {exc!r}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"test hosts: `{shlex.join(command)}` failed with exit status {done.returncode}: "
            f"{done.stderr.strip() or done.stdout.strip()} (network namespaces need root)",
            pytrace=False,
        )
    return done.stdout


def _routed_blocks() -> set[ipaddress.IPv4Network]:
    """The /29s of TEST-NET-2 that an address or a route of this machine already covers."""
    taken: set[ipaddress.IPv4Network] = set()
    lines = _ip("-4", "-o", "addr", "show").splitlines() + _ip("-4", "-o", "route", "show", "table", "all").splitlines()
    for line in lines:
        for token in line.split():
            try:
                network = ipaddress.ip_network(token, strict=False)
            except ValueError:
                continue
            if isinstance(network, ipaddress.IPv4Network) and network.overlaps(TEST_NET_2) and network.prefixlen >= 24:
                taken.update(b for b in TEST_NET_2.subnets(new_prefix=BLOCK) if b.overlaps(network))
    return taken


@contextmanager
def netns_hosts(count: int = 2) -> Iterator[NetnsHosts]:
    """A fresh network namespace ``cxg-<6 hex>`` holding ``count`` test host addresses."""
    assert 1 <= count <= 2 ** (32 - BLOCK) - 3
    name = f"cxg-{secrets.token_hex(3)}"
    host_link, ns_link = f"{name}-h", f"{name}-n"  # 12 characters, under IFNAMSIZ
    free = sorted(set(TEST_NET_2.subnets(new_prefix=BLOCK)) - _routed_blocks())
    if not free:
        pytest.fail(f"test hosts: every /{BLOCK} of {TEST_NET_2} is routed already", pytrace=False)
    block = random.choice(free)
    gateway, *addresses = (str(a) for a in list(block.hosts())[: count + 1])
    made_netns = made_link = False
    try:
        _ip("netns", "add", name)
        made_netns = True
        _ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link, "netns", name)
        made_link = True
        _ip("addr", "add", f"{gateway}/{BLOCK}", "dev", host_link)
        _ip("link", "set", host_link, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        for address in addresses:
            _ip("-n", name, "addr", "add", f"{address}/{BLOCK}", "dev", ns_link)
        _ip("-n", name, "link", "set", ns_link, "up")
        for address in addresses:  # nothing goes out unless it goes into this namespace
            route = _ip("-4", "-o", "route", "get", address)
            if f" dev {host_link} " not in f" {route.strip()} ":
                pytest.fail(f"test hosts: {address} is not routed to {host_link}: {route.strip()}", pytrace=False)
        yield NetnsHosts(name, host_link, gateway, tuple(addresses))
    finally:
        problems = []
        for made, command in ((made_link, ["ip", "link", "del", host_link]), (made_netns, ["ip", "netns", "del", name])):
            if made:
                done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
                if done.returncode != 0:
                    problems.append(f"`{shlex.join(command)}`: {done.stderr.strip()}")
        if problems:
            pytest.fail("test hosts: could not remove " + "; ".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def netns_test_hosts() -> Iterator[NetnsHosts]:
    """Two test hosts in a network namespace of this module's own."""
    with netns_hosts(2) as hosts:
        yield hosts
