#!/usr/bin/env python3
"""Interop peer for codecs/tests/smp_interop.rs, built on the Python `smp`
package (smp.packet for the serial framing, smp.*_management for bodies).

stdin: JSON {"frames": {name: wire_hex}} written by otabridge.
stdout: JSON {"decoded": {name: fields}, "encoded": {name: wire_hex}}:
what smp read from otabridge's frames, and frames smp wrote for otabridge.
"""

import json
import sys

import cbor2
from smp import header as H
from smp import packet
from smp.image_management import (
    ImageState,
    ImageStatesReadRequest,
    ImageStatesReadResponse,
    ImageStatesWriteRequest,
    ImageUploadWriteRequest,
    ImageUploadWriteResponse,
)
from smp.os_management import (
    EchoWriteRequest,
    EchoWriteResponse,
    MCUMgrParametersReadRequest,
    MCUMgrParametersReadResponse,
    ResetWriteRequest,
)


def unframe(wire: bytes) -> bytes:
    """smp.packet.decode, fed one line at a time as a serial port gives them."""
    lines = [line + b"\n" for line in wire.split(b"\n") if line]
    for line in lines:
        assert len(line) <= 127, f"line of {len(line)} bytes"
    decoder = packet.decode()
    next(decoder)
    for line in lines:
        try:
            decoder.send(line)
        except StopIteration as done:
            return bytes(done.value)
    raise ValueError("incomplete packet")


def frame(msg: bytes) -> str:
    return b"".join(packet.encode(msg, line_length=127)).hex()


def header_fields(m):
    h = m.header
    return {"op": int(h.op), "version": int(h.version), "group": int(h.group_id), "seq": h.sequence, "id": int(h.command_id)}


def decode(name, msg):
    if name.startswith("echo"):
        m = EchoWriteRequest.loads(msg)
        out = {"d": m.d}
    elif name == "upload_first" or name == "upload_next":
        m = ImageUploadWriteRequest.loads(msg)
        out = {"off": m.off, "len": m.len, "image": m.image, "sha": m.sha.hex() if m.sha else None, "data": m.data.hex(), "upgrade": m.upgrade}
        # smp re-encodes the same fields to the same bytes.
        kw = {k: v for k, v in dict(off=m.off, data=m.data, len=m.len, sha=m.sha, image=m.image, upgrade=m.upgrade).items() if v is not None}
        out["reencoded_equal"] = bytes(ImageUploadWriteRequest(sequence=m.header.sequence, **kw)) == msg
    elif name == "state_test":
        m = ImageStatesWriteRequest.loads(msg)
        out = {"hash": m.hash.hex(), "confirm": m.confirm}
    elif name == "state_read":
        m = ImageStatesReadRequest.loads(msg)
        out = {}
    elif name == "reset":
        m = ResetWriteRequest.loads(msg)
        out = {}
    elif name == "params":
        m = MCUMgrParametersReadRequest.loads(msg)
        out = {}
    else:
        raise ValueError(name)
    out["header"] = header_fields(m)
    return out


def raw(op, group, cmd, seq, body, version=1):
    data = cbor2.dumps(body, canonical=True)
    h = H.Header(op=H.OP(op), version=H.Version(version), flags=H.Flag(0), length=len(data), group_id=group, sequence=seq, command_id=cmd)
    return bytes(h) + data


def encoded():
    img = [
        ImageState(image=0, slot=0, version="1.0.0", hash=bytes(range(32)), bootable=True, confirmed=True, active=True),
        ImageState(image=0, slot=1, version="1.2.3.4", hash=bytes(range(32, 64)), bootable=True, pending=True),
    ]
    return {
        "params": frame(bytes(MCUMgrParametersReadResponse(buf_size=512, buf_count=4, sequence=7))),
        "upload_off": frame(bytes(ImageUploadWriteResponse(off=1234, sequence=8))),
        "upload_match": frame(bytes(ImageUploadWriteResponse(off=70000, match=True, sequence=9))),
        "state": frame(bytes(ImageStatesReadResponse(images=img, sequence=10))),
        "echo": frame(bytes(EchoWriteResponse(r="x" * 200, sequence=11))),
        "err_v2": frame(raw(3, 1, 1, 12, {"err": {"group": 1, "rc": 9}})),
        "err_v1": frame(raw(3, 1, 1, 13, {"rc": 8}, version=0)),
    }


def main():
    req = json.load(sys.stdin)
    decoded = {name: decode(name, unframe(bytes.fromhex(wire))) for name, wire in req["frames"].items()}
    json.dump({"decoded": decoded, "encoded": encoded()}, sys.stdout)


if __name__ == "__main__":
    main()
