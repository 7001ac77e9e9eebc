"""What one 2-frame message costs the proxy's stream loop in pyzmq calls alone.

    python bench/stream_io.py [--messages 200000]

Receives and re-sends messages between inproc PUSH/PULL pairs in one process
and prints CPU time (not wall time: stable on a busy machine) per message
for each way of writing the loop, best of three:

* bytes: ``recv()`` copies, ``getsockopt(RCVMORE)`` per frame, the
  ``zmq.Socket.send`` wrapper (the proxy's loop before issue 14's second pass);
* frames: ``recv(copy=False)``, the frame's ``more`` flag, the wrapper;
* frames + backend send: the same, sending through the backend's ``send``
  (what ``proxy/proxy.py``'s ``_Stream`` does);
* bytes, no RCVMORE: a lower bound that knows every message has 2 frames.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import zmq

PAYLOAD = b'{"request_id":"0123456789abcdef","reply_to":"AGENT_REPLY_x","intent":"hello"}'
NB, SM, RCVMORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE), int(zmq.RCVMORE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    n = parser.parse_args().messages
    ctx = zmq.Context()
    src, inp, out, sink = (ctx.socket(k) for k in (zmq.PUSH, zmq.PULL, zmq.PUSH, zmq.PULL))
    for sock in (src, inp, out, sink):
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    inp.bind("inproc://in")
    src.connect("inproc://in")
    sink.bind("inproc://out")
    out.connect("inproc://out")
    backend_send = super(zmq.Socket, out).send

    def as_bytes() -> None:
        recv, more, send = inp.recv, inp.getsockopt, out.send
        for _ in range(n):
            parts = [recv(NB)]
            while more(RCVMORE):
                parts.append(recv(NB))
            for part in parts[:-1]:
                send(part, SM)
            send(parts[-1], NB)

    def frames(send: Callable[..., object]) -> Callable[[], None]:
        def loop() -> None:
            recv = inp.recv
            for _ in range(n):
                frame = recv(NB, copy=False)
                _topic = frame.bytes
                parts = [frame]
                while frame.more:
                    frame = recv(NB, copy=False)
                    parts.append(frame)
                for part in parts[:-1]:
                    send(part, SM, False)
                send(parts[-1], NB, False)

        return loop

    def two_frames() -> None:
        recv, send = inp.recv, out.send
        for _ in range(n):
            topic, payload = recv(NB), recv(NB)
            send(topic, SM)
            send(payload, NB)

    loops = {
        "bytes + getsockopt(RCVMORE) + wrapper": as_bytes,
        "frames + wrapper": frames(out.send),
        "frames + backend send": frames(backend_send),
        "bytes, no RCVMORE (lower bound)": two_frames,
    }
    best: dict[str, float] = {}
    for _ in range(3):
        for name, loop in loops.items():
            for _ in range(n):
                src.send(b"TOPIC_BENCH", zmq.SNDMORE)
                src.send(PAYLOAD)
            started = time.process_time()
            loop()
            spent = time.process_time() - started
            while sink.poll(0):
                sink.recv_multipart()
            best[name] = min(best.get(name, spent), spent)
    for name, spent in best.items():
        print(f"{name:40} {spent / n * 1e6:5.2f} µs CPU per message")
    for sock in (src, inp, out, sink):
        sock.close(0)
    ctx.term()


if __name__ == "__main__":
    main()
