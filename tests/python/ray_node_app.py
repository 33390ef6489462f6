"""Two-deployment Ray Serve app of tests/tests/ray_node.rs: a Ray head node's real workload.

Deployed through the dashboard's REST API (PUT /api/serve/applications/) with
import_path "ray_node_app:app" and this folder on the workers' PYTHONPATH; the test scales the
ingress deployment with the same config and another num_replicas, which Serve applies without
restarting the replicas it keeps.

  GET /node/?name=x  -> {"greeting": "hello x", "replica": "<ingress replica id>"}

Ingress calls Greeter through a deployment handle, so a request crosses two deployments.
Replicas reserve no CPU: a 2-core node holds 3 ingress replicas, the greeter and Serve itself.
"""

from ray import serve
from starlette.requests import Request


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Greeter:
    def __call__(self, name: str) -> str:
        return f"hello {name}"


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Ingress:
    def __init__(self, greeter):
        self.greeter = greeter

    async def __call__(self, request: Request) -> dict:
        greeting = await self.greeter.remote(request.query_params.get("name", "node"))
        replica = serve.get_replica_context().replica_id.unique_id
        return {"greeting": greeting, "replica": replica}


app = Ingress.bind(Greeter.bind())
