"""A real gRPC client for serve-guard's gRPC proxy test: one grpc.health.v1.Health/Check call.

Prints one JSON line: {"code": <grpc status name>, "code_value": <int>, "details": ..., "status":
<health status name or null>}. Exit status 0 whenever a gRPC status was received (even an error
status: the test asserts on it), 2 on bad usage.

Run: python grpc_health_check.py --target HOST:PORT [--token-file FILE] [--service NAME]
     [--tls --ca-file PEM --server-name NAME]
The token is read from a file, never from the command line, so it does not show in process lists.
"""

import argparse
import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CALL_TIMEOUT_S = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--token-file")
    parser.add_argument("--service", default="")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--ca-file")
    parser.add_argument("--server-name")
    args = parser.parse_args()

    metadata = []
    if args.token_file:
        with open(args.token_file, encoding="ascii") as f:
            metadata.append(("authorization", f"Bearer {f.read().strip()}"))

    if args.tls:
        root = open(args.ca_file, "rb").read() if args.ca_file else None
        options = []
        if args.server_name:
            options.append(("grpc.ssl_target_name_override", args.server_name))
        channel = grpc.secure_channel(
            args.target, grpc.ssl_channel_credentials(root_certificates=root), options
        )
    else:
        channel = grpc.insecure_channel(args.target)

    stub = health_pb2_grpc.HealthStub(channel)
    result = {"code": "OK", "code_value": 0, "details": None, "status": None}
    try:
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=args.service),
            metadata=metadata,
            timeout=CALL_TIMEOUT_S,
        )
        result["status"] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as e:
        result["code"] = e.code().name
        result["code_value"] = e.code().value[0]
        result["details"] = e.details()
    finally:
        channel.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
