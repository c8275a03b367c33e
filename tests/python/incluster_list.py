"""Lists the pods of its namespace through the `kubernetes` Service, once a second, as an
in-cluster client does: the ServiceAccount token, the projected ca.crt and the
KUBERNETES_SERVICE_HOST/PORT variables (config.load_incluster_config)."""

import json
import time

from kubernetes import client, config
from kubernetes.client.rest import ApiException

config.load_incluster_config()
print("host", client.Configuration.get_default_copy().host, flush=True)
api = client.CoreV1Api()
with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
    namespace = f.read()
while True:
    try:
        pods = api.list_namespaced_pod(namespace)
        print("listed", " ".join(p.metadata.name for p in pods.items), flush=True)
    except ApiException as e:
        message = json.loads(e.body).get("message", "") if e.body else ""
        print("status", e.status, message, flush=True)
    except Exception as e:  # noqa: BLE001 - any failure is reported and retried
        print("error", repr(e), flush=True)
    time.sleep(1)
