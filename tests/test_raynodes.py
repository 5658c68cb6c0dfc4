"""The Ray wiring that needs no cluster: an `--address` where nothing listens is refused at once."""

from __future__ import annotations

import socket

import pytest

from sde_search import raynodes
from sde_search.config import ConfigError


def test_an_address_where_nothing_listens_is_refused_at_once() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"--address 127.0.0.1:{port}: no Ray cluster answers there \("):
        raynodes.check_address(f"127.0.0.1:{port}")


def test_an_address_where_something_listens_passes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        raynodes.check_address(f"127.0.0.1:{s.getsockname()[1]}")


@pytest.mark.parametrize("address", ["auto", "ray://127.0.0.1:1", "127.0.0.1"])
def test_addresses_ray_resolves_itself_are_left_to_it(address: str) -> None:
    raynodes.check_address(address)  # no connection tried, nothing raised
