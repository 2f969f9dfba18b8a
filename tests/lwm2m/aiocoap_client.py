#!/usr/bin/env python3
"""A LwM2M client on aiocoap (a CoAP stack not written here, with its own
block-wise reassembly) for tests/lwm2m_interop.rs: it registers with the
gateway's /rd from the socket it serves on, offers /3/0/3 and the Firmware
Update object /5/0 (push only: /5/0/9 = 1), takes the package as a Block1
PUT on /5/0/0 (aiocoap answers 2.31 to each non-final block and hands the
reassembled payload over), installs on Execute /5/0/2, and de-registers on
SIGTERM. Events go to stdout as JSON lines.

Usage: aiocoap_client.py HOST PORT ENDPOINT VERSION TARGET_VERSION
"""

import asyncio
import hashlib
import json
import signal
import sys

import aiocoap
import aiocoap.resource as resource
from aiocoap import Code, Message


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


class Device:
    def __init__(self, version, target):
        self.version = version
        self.target = target
        self.state = 0  # /5/0/3: 0 idle, 1 downloading, 2 downloaded, 3 updating
        self.result = 0  # /5/0/5


class Text(resource.Resource):
    """A readable resource, text/plain."""

    def __init__(self, read):
        super().__init__()
        self.read = read

    async def render_get(self, request):
        return Message(payload=str(self.read()).encode(), content_format=0)


class Package(resource.Resource):
    """/5/0/0: the image, written block-wise."""

    def __init__(self, dev):
        super().__init__()
        self.dev = dev

    async def render_put(self, request):
        data = request.payload
        if not data:
            # An empty write resets the state machine (LwM2M 1.1 E.6).
            self.dev.state, self.dev.result = 0, 0
            return Message(code=Code.CHANGED)
        self.dev.state = 2
        emit("downloaded", sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        return Message(code=Code.CHANGED)


class Update(resource.Resource):
    """/5/0/2: Execute installs the downloaded image."""

    def __init__(self, dev):
        super().__init__()
        self.dev = dev

    async def render_post(self, request):
        if self.dev.state != 2:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        self.dev.state = 3
        asyncio.get_running_loop().call_later(0.2, self.installed)
        return Message(code=Code.CHANGED)

    def installed(self):
        self.dev.version = self.dev.target
        self.dev.state, self.dev.result = 0, 1
        emit("updated", version=self.dev.version)


async def main(host, port, endpoint, version, target):
    dev = Device(version, target)
    site = resource.Site()
    site.add_resource(["3", "0", "3"], Text(lambda: dev.version))
    site.add_resource(["5", "0", "0"], Package(dev))
    site.add_resource(["5", "0", "2"], Update(dev))
    site.add_resource(["5", "0", "3"], Text(lambda: dev.state))
    site.add_resource(["5", "0", "5"], Text(lambda: dev.result))
    site.add_resource(["5", "0", "8"], Text(lambda: 0))  # CoAP
    site.add_resource(["5", "0", "9"], Text(lambda: 1))  # push only
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", 0))
    server = f"coap://{host}:{port}"
    reg = Message(
        code=Code.POST,
        uri=f"{server}/rd?ep={endpoint}&lt=300&lwm2m=1.1&b=U",
        payload=b"</3/0>,</5/0>",
        content_format=40,
    )
    answer = await ctx.request(reg).response
    if answer.code != Code.CREATED:
        emit("refused", code=str(answer.code))
        return 1
    location = "/".join(answer.opt.location_path)
    emit("registered", location=location)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    bye = Message(code=Code.DELETE, uri=f"{server}/{location}")
    answer = await ctx.request(bye).response
    emit("deregistered", code=str(answer.code))
    await ctx.shutdown()
    return 0


if __name__ == "__main__":
    host, port, endpoint, version, target = sys.argv[1:6]
    sys.exit(asyncio.run(main(host, int(port), endpoint, version, target)))
