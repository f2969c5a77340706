"""A Ray job for tests/test_cluster.py: which Ray does a worker's own state-API lookup find?"""
import json

import ray
from ray._private.services import canonicalize_bootstrap_address_or_die
from ray.train.v2._internal.state.util import is_actor_alive


@ray.remote(num_cpus=0)
class Pinger:
    def ping(self):
        return 1


@ray.remote(num_cpus=0)
def probe(actor_id):
    return canonicalize_bootstrap_address_or_die(None), bool(is_actor_alive(actor_id, timeout=30))


ray.init()
pinger = Pinger.remote()
ray.get(pinger.ping.remote())
found, alive = ray.get(probe.remote(pinger._actor_id.hex()))
print("probe: " + json.dumps([found, ray.get_runtime_context().gcs_address, alive]))
