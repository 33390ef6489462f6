#!/usr/bin/python3
"""The VM test's clients, run on the host side of the guest's tap (in the test's network
namespace). Every wait is bounded.

  probe.py matrix NAME,PROTO,SRC,DST,PORT ...   one connection (TCP) or echo (UDP) each, in
                                                parallel; prints "NAME pass|drop|refused"
  probe.py stream LABEL,SRC,DST,PORT ...        numbered UDP datagrams every 50 ms from each
                                                source until stdin closes; prints per label how
                                                many were sent and echoed
  probe.py boot LABEL,SRC,DST,PORT ...          TCP connection attempts in a loop from each source
                                                until stdin closes; prints per label how many
                                                connected
  probe.py serve ADDR,PORT ...                  a TCP server answering one line and a UDP echo on
                                                each address until stdin closes, for the guest's
                                                own connections out; prints how many each served
"""
import errno
import socket
import sys
import threading
import time

PROBE_TIMEOUT = 3.0
# "No route to host" while the neighbour entry is being resolved (right after the guest's
# reboot): retried, it is never the filter's verdict (a dropped packet is silence).
UNREACHABLE_RETRY = 0.3
UNREACHABLE_FOR = 15.0
UDP_TRIES = 3
STREAM_INTERVAL = 0.05
STREAM_DRAIN = 3.0
BOOT_TIMEOUT = 1.0
BOOT_PAUSE = 0.2
# Upper bound of a stream or boot run, whatever the host does.
MAX_RUN = 600.0


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def parse(spec):
    *head, src, dst, port = spec.split(",")
    return head, src, dst, int(port)


def tcp_once(src, dst, port, timeout):
    with socket.socket(family(dst), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.bind((src, 0))
        try:
            s.connect((dst, port))
            s.recv(64)
            return "pass"
        except ConnectionRefusedError:
            return "refused"
        except (socket.timeout, TimeoutError):
            return "drop"


def udp_once(src, dst, port):
    with socket.socket(family(dst), socket.SOCK_DGRAM) as s:
        s.settimeout(PROBE_TIMEOUT / UDP_TRIES)
        s.bind((src, 0))
        for _ in range(UDP_TRIES):
            s.sendto(b"probe", (dst, port))
            try:
                if s.recv(64) == b"probe":
                    return "pass"
            except (socket.timeout, TimeoutError):
                continue
        return "drop"


def matrix(specs):
    results = {}

    def run(spec):
        (name, proto), src, dst, port = parse(spec)
        deadline = time.monotonic() + UNREACHABLE_FOR
        while True:
            try:
                if proto == "tcp":
                    results[name] = tcp_once(src, dst, port, PROBE_TIMEOUT)
                else:
                    results[name] = udp_once(src, dst, port)
                return
            except OSError as e:
                unreachable = e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
                if not unreachable or time.monotonic() > deadline:
                    results[name] = "error:" + str(e).replace(" ", "_")
                    return
                time.sleep(UNREACHABLE_RETRY)

    threads = [threading.Thread(target=run, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for spec in specs:
        name = spec.split(",")[0]
        print(name, results.get(name, "error:no_result"))


def until_stdin_closes():
    done = threading.Event()

    def watch():
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    return done


def stream(specs):
    done = until_stdin_closes()
    start = time.monotonic()
    socks = []
    for spec in specs:
        (label,), src, dst, port = parse(spec)
        s = socket.socket(family(dst), socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append((label, s, (dst, port), set(), [0]))
    seq = 0
    while not done.is_set() and time.monotonic() - start < MAX_RUN:
        for label, s, peer, echoed, sent in socks:
            s.sendto(b"%d" % seq, peer)
            sent[0] += 1
        seq += 1
        deadline = time.monotonic() + STREAM_INTERVAL
        drain(socks, deadline)
    drain(socks, time.monotonic() + STREAM_DRAIN)
    for label, s, _, echoed, sent in socks:
        print(f"{label}_sent={sent[0]} {label}_echoed={len(echoed)}")


def drain(socks, deadline):
    while time.monotonic() < deadline:
        for _, s, _, echoed, _ in socks:
            try:
                while True:
                    echoed.add(s.recv(64))
            except BlockingIOError:
                pass
        time.sleep(0.005)


def boot(specs):
    done = until_stdin_closes()
    start = time.monotonic()
    counts = {}
    lock = threading.Lock()

    def loop(spec):
        (label,), src, dst, port = parse(spec)
        tries = connects = 0
        while not done.is_set() and time.monotonic() - start < MAX_RUN:
            tries += 1
            try:
                if tcp_once(src, dst, port, BOOT_TIMEOUT) == "pass":
                    connects += 1
            except OSError:
                pass  # no route or address yet while the guest boots
            time.sleep(BOOT_PAUSE)
        with lock:
            counts[label] = (tries, connects)

    threads = [threading.Thread(target=loop, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for label, (tries, connects) in sorted(counts.items()):
        print(f"{label}_tries={tries} {label}_connects={connects}")


def serve(specs):
    done = until_stdin_closes()
    start = time.monotonic()
    counts = {}
    lock = threading.Lock()
    socks = []
    for spec in specs:
        addr, port = spec.rsplit(",", 1)
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(family(addr), kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, int(port)))
            if kind == socket.SOCK_STREAM:
                s.listen(16)
            s.settimeout(BOOT_PAUSE)
            socks.append((f"{addr}_{'tcp' if kind == socket.SOCK_STREAM else 'udp'}", s))

    def loop(key, s):
        served = 0
        while not done.is_set() and time.monotonic() - start < MAX_RUN:
            try:
                if s.type == socket.SOCK_STREAM:
                    conn, _ = s.accept()
                    with conn:
                        conn.sendall(b"ok\n")
                else:
                    data, peer = s.recvfrom(2048)
                    s.sendto(data, peer)
                served += 1
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                pass
        with lock:
            counts[key] = served

    threads = [threading.Thread(target=loop, args=ks) for ks in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(" ".join(f"{key}={n}" for key, n in sorted(counts.items())))


if __name__ == "__main__":
    modes = {"matrix": matrix, "stream": stream, "boot": boot, "serve": serve}
    modes[sys.argv[1]](sys.argv[2:])
