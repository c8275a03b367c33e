"""The official Python kubernetes client against skiff: list, create, patch, watch, delete;
the default StorageClass, and a claim bound to a volume made beforehand.

Run by tests/tests/api_python.rs with KUBECONFIG pointing at a fresh control plane.
Exits non-zero (with an assertion message) on any mismatch.
"""
import threading
import time

from kubernetes import client, config, watch

config.load_kube_config()
core = client.CoreV1Api()
apps = client.AppsV1Api()

names = {ns.metadata.name for ns in core.list_namespace().items}
assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names, names

start = core.list_namespaced_config_map("default").metadata.resource_version
events = []


def watcher():
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, "default",
                       resource_version=start, timeout_seconds=10):
        events.append((ev["type"], ev["object"].metadata.name, ev["object"].data))
        if ev["type"] == "DELETED":
            w.stop()


t = threading.Thread(target=watcher)
t.start()

cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}),
                        data={"a": "1"})
created = core.create_namespaced_config_map("default", cm)
assert created.metadata.uid and created.metadata.resource_version

patched = core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}})
assert patched.data == {"a": "1", "b": "2"}, patched.data
assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)

selected = core.list_namespaced_config_map("default", label_selector="from=python").items
assert [c.metadata.name for c in selected] == ["py"], selected

dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="pyweb"),
    spec=client.V1DeploymentSpec(
        replicas=1,
        selector=client.V1LabelSelector(match_labels={"app": "pyweb"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "pyweb"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.36")]))))
apps.create_namespaced_deployment("default", dep)
assert apps.read_namespaced_deployment("pyweb", "default").spec.strategy.type == "RollingUpdate"

# An autoscaler made in v2 reads back in v1; the controller says why it cannot scale yet
# (the Deployment's pods have no node, so no metrics).
auto_v2 = client.AutoscalingV2Api()
hpa = client.V2HorizontalPodAutoscaler(
    metadata=client.V1ObjectMeta(name="pyweb"),
    spec=client.V2HorizontalPodAutoscalerSpec(
        scale_target_ref=client.V2CrossVersionObjectReference(
            api_version="apps/v1", kind="Deployment", name="pyweb"),
        max_replicas=3,
        metrics=[client.V2MetricSpec(type="Resource", resource=client.V2ResourceMetricSource(
            name="cpu", target=client.V2MetricTarget(type="Utilization", average_utilization=60)))],
        behavior=client.V2HorizontalPodAutoscalerBehavior(
            scale_down=client.V2HPAScalingRules(stabilization_window_seconds=5))))
made = auto_v2.create_namespaced_horizontal_pod_autoscaler("default", hpa)
assert made.spec.min_replicas == 1, made.spec
assert made.spec.behavior.scale_up.policies[0].type == "Pods", made.spec.behavior
v1 = client.AutoscalingV1Api().read_namespaced_horizontal_pod_autoscaler("pyweb", "default")
assert v1.spec.target_cpu_utilization_percentage == 60, v1.spec
reason = None
for _ in range(100):
    status = auto_v2.read_namespaced_horizontal_pod_autoscaler("pyweb", "default").status
    active = [c for c in (status.conditions or []) if c.type == "ScalingActive"]
    if active:
        reason = active[0].reason
        break
    time.sleep(0.2)
assert reason == "FailedGetResourceMetric", reason
auto_v2.delete_namespaced_horizontal_pod_autoscaler("pyweb", "default")

try:
    core.create_namespaced_config_map("default", cm)
    raise AssertionError("a second create must fail")
except client.exceptions.ApiException as e:
    assert e.status == 409, e.status

core.delete_namespaced_config_map("py", "default")
t.join(timeout=15)
kinds = [(e[0], e[1]) for e in events]
assert kinds == [("ADDED", "py"), ("MODIFIED", "py"), ("DELETED", "py")], events
assert events[1][2] == {"a": "1", "b": "2"}, events[1]

storage = client.StorageV1Api()
default = [c for c in storage.list_storage_class().items
           if (c.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true"]
assert [(c.metadata.name, c.provisioner, c.volume_binding_mode) for c in default] == \
    [("local-path", "rancher.io/local-path", "WaitForFirstConsumer")], default

core.create_persistent_volume(client.V1PersistentVolume(
    metadata=client.V1ObjectMeta(name="py-pv"),
    spec=client.V1PersistentVolumeSpec(
        capacity={"storage": "2Gi"}, access_modes=["ReadWriteOnce"], storage_class_name="",
        host_path=client.V1HostPathVolumeSource(path="/srv/py-pv"))))
core.create_namespaced_persistent_volume_claim("default", client.V1PersistentVolumeClaim(
    metadata=client.V1ObjectMeta(name="py-claim"),
    spec=client.V1PersistentVolumeClaimSpec(
        access_modes=["ReadWriteOnce"], storage_class_name="",
        resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}))))
deadline = time.time() + 30
while True:
    claim = core.read_namespaced_persistent_volume_claim("py-claim", "default")
    pv = core.read_persistent_volume("py-pv")
    if claim.status.phase == "Bound" and pv.status.phase == "Bound":
        break
    assert time.time() < deadline, (claim.status, pv.status)
    time.sleep(0.2)
assert claim.spec.volume_name == "py-pv", claim.spec
assert claim.metadata.annotations["pv.kubernetes.io/bind-completed"] == "yes", claim.metadata
assert claim.status.capacity == {"storage": "2Gi"}, claim.status
assert pv.spec.claim_ref.name == "py-claim" and pv.spec.claim_ref.uid == claim.metadata.uid
assert pv.spec.persistent_volume_reclaim_policy == "Retain", pv.spec

core.delete_namespaced_persistent_volume_claim("py-claim", "default")
deadline = time.time() + 30
while core.read_persistent_volume("py-pv").status.phase != "Released":
    assert time.time() < deadline, core.read_persistent_volume("py-pv").status
    time.sleep(0.2)
print("python client: ok")
