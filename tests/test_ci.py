"""CI runs the suite inside its own network namespace (``.ci/run``): only loopback exists there."""

from __future__ import annotations

import os
import socket

import pytest


def test_in_ci_the_only_network_interface_is_loopback():
    if not os.environ.get("CORPUSFORGE_NETNS"):
        pytest.skip("not inside .ci/run's network namespace")
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
