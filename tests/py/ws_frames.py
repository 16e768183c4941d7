"""An independent WebSocket client (Python `websockets`) that checks the
gateway's hand-written server frames.

Usage: ws_frames.py <ws-url> <token>

It authenticates, then asks for responses whose frames have payloads of
exactly 125, 126, 65535, 65536 and 5 MB bytes (the padding is the request
id, echoed in the response), pings with 0 and 125 bytes (pong payloads of
the same sizes), all while `tick` events (every 20 ms) are interleaved:
every frame must decode (websockets rejects masked server frames, reserved
bits, bad lengths, invalid UTF-8 and bad close frames), every event's `seq`
must follow the last. Finally an invalid frame must get a 1008 close frame
with its reason. Prints a JSON summary; exits non-zero on any failure.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SIZES = [125, 126, 65535, 65536, 5 * 1024 * 1024]


async def main(url, token):
    summary = {"responses": {}, "pongs": [], "events": 0, "close": None}
    # max_queue=None: the client keeps reading while it sends (the gateway
    # stops reading a client whose responses are not being read).
    async with connect(url, max_size=None, max_queue=None, ping_interval=None, compression=None) as ws:
        challenge = json.loads(await ws.recv())
        assert challenge["event"] == "connect.challenge", challenge
        await ws.send(json.dumps({
            "type": "req", "id": "c1", "method": "connect",
            "params": {
                "minProtocol": 4, "maxProtocol": 4,
                "client": {"id": "py", "version": "1", "platform": "linux", "mode": "test"},
                "role": "operator", "scopes": ["operator.read"], "auth": {"token": token},
            },
        }))
        hello = json.loads(await ws.recv())
        assert hello["ok"] is True, hello

        last_seq = 0
        pending = {}

        async def frame():
            """The next frame, checking event seqs; returns (raw, parsed)."""
            nonlocal last_seq
            raw = await ws.recv(decode=True)
            assert isinstance(raw, str)
            msg = json.loads(raw)
            if msg.get("type") == "event":
                assert msg["seq"] == last_seq + 1, f"seq {msg['seq']} after {last_seq}"
                last_seq = msg["seq"]
                summary["events"] += 1
            return raw, msg

        async def response(rid):
            while True:
                raw, msg = await frame()
                if msg.get("type") == "res" and msg["id"] == rid:
                    return raw, msg

        # The response's length for a one-character id, to pad the others.
        await ws.send(json.dumps({"type": "req", "id": "x", "method": "no.such.method"}))
        base_raw, base = await response("x")
        assert base["ok"] is False
        base_len = len(base_raw.encode())
        for size in SIZES:
            rid = "p" * (1 + size - base_len)
            pending[rid] = size
            await ws.send(json.dumps({"type": "req", "id": rid, "method": "no.such.method"}))
        # Pings go out while the big responses are queued.
        for n in (0, 125):
            waiter = await ws.ping(b"z" * n)
            pending[("pong", n)] = waiter
        # Requests are answered concurrently: responses may come in any order.
        sizes = {rid: size for rid, size in pending.items() if not isinstance(rid, tuple)}
        while sizes:
            raw, msg = await frame()
            if msg.get("type") != "res":
                continue
            size = sizes.pop(msg["id"])
            got = len(raw.encode())
            assert got == size, f"payload of {got} bytes, wanted {size}"
            summary["responses"][str(size)] = got
        # Events keep coming between and after: wait for a few more.
        before = summary["events"]
        while summary["events"] < before + 3:
            await frame()
        for key, waiter in pending.items():
            if isinstance(key, tuple):
                await asyncio.wait_for(waiter, 5)
                summary["pongs"].append(key[1])
        # Not a request: the server closes 1008 with its reason.
        await ws.send("this is not a frame")
        try:
            while True:
                await frame()
        except ConnectionClosed as e:
            assert e.rcvd is not None, "no close frame received"
            summary["close"] = {"code": e.rcvd.code, "reason": e.rcvd.reason}
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
