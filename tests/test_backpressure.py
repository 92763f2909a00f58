"""Finding daphne's transport behind the ASGI send callable, and reading its buffer."""

import functools

from agent_channels.ws.backpressure import find_transport, pending_bytes


class Transport:
    def __init__(self, buffered=b"", offset=0, temp=0):
        self.dataBuffer, self.offset, self._tempDataLen = buffered, offset, temp


class Protocol:
    def __init__(self, transport):
        self.transport = transport


class Server:
    async def handle_reply(self, protocol, message):  # the shape of daphne's send
        pass


class SessionWrapper:  # the shape of channels' InstanceSessionWrapper
    def __init__(self, real_send):
        self.real_send = real_send

    async def send(self, message):
        await self.real_send(message)


def test_the_transport_is_found_through_middleware_wrappers():
    transport = Transport()
    daphne_send = functools.partial(Server().handle_reply, Protocol(transport))
    assert find_transport(daphne_send) is transport
    assert find_transport(SessionWrapper(daphne_send).send) is transport
    assert find_transport(SessionWrapper(SessionWrapper(daphne_send).send).send) is transport


def test_other_servers_give_no_transport_and_no_limit():
    async def uvicorn_send(message):
        pass

    assert find_transport(uvicorn_send) is None
    assert find_transport(functools.partial(uvicorn_send)) is None
    assert pending_bytes(None) is None
    assert pending_bytes(object()) is None


def test_pending_bytes_counts_the_unsent_buffer():
    assert pending_bytes(Transport(b"x" * 100, offset=40, temp=25)) == 85
    assert pending_bytes(Transport()) == 0
