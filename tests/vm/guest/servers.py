#!/usr/bin/python3
"""Stand-ins in the VM test for Ray Serve (8000, 9000), a service in no port list (8080) and sshd
(22): on each port, a TCP server that answers one line and an UDP echo, both on IPv4 and IPv6 (one
dual-stack socket each)."""
import socket
import sys
import threading

PORTS = [int(p) for p in sys.argv[1:]] or [8000, 9000, 8080, 22]


def listener(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    return s


def tcp(port):
    s = listener(socket.SOCK_STREAM, port)
    s.listen(64)
    while True:
        conn, _ = s.accept()
        with conn:
            try:
                conn.sendall(b"ok %d\n" % port)
            except OSError:
                pass


def udp(port):
    s = listener(socket.SOCK_DGRAM, port)
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)


threads = [threading.Thread(target=f, args=(p,), daemon=True) for p in PORTS for f in (tcp, udp)]
for t in threads:
    t.start()
for t in threads:
    t.join()
