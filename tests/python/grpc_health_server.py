"""A real gRPC server for serve-guard's gRPC proxy test: grpcio's standard health service.

Reports SERVING for the overall server ("") and for SERVICE_NAME. Plaintext HTTP/2 (h2c), as Ray
Serve's own gRPC proxy speaks behind serve-guard's `grpc_upstream`.

Run: python grpc_health_server.py --listen 127.0.0.1:9000. Stops on SIGTERM/SIGINT.
"""

import argparse
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE_NAME = "serve-guard.test.Echo"
WORKERS = 4
STOP_GRACE_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9000")
    args = parser.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if server.add_insecure_port(args.listen) == 0:
        raise SystemExit(f"grpc_health_server: cannot listen on {args.listen}")
    server.start()
    print(f"grpc_health_server: ready on {args.listen}", flush=True)
    stop.wait()
    server.stop(STOP_GRACE_S).wait()


if __name__ == "__main__":
    main()
