"""The Kubernetes manifests hold together: what they reference exists, the probes ask
the health service the server reports on, and the embedded config is a valid one."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import ROOT
from voxline.config import load_settings
from voxline.engines.repository import ModelRepository
from voxline.transport.server import SERVICE_NAME

K8S = ROOT / "deploy" / "kubernetes"


def _objects() -> dict[tuple[str, str], dict]:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml")
                                    if p.name != "kustomization.yaml")
    objects = {}
    for name in listed:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def test_kubernetes_manifests_are_consistent(tmp_path):
    objs = _objects()
    deploy = objs[("Deployment", "voxline")]
    pod = deploy["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    # Readiness asks for the service that turns NOT_SERVING while draining.
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["grpc"] == {"port": ports["grpc"], "service": SERVICE_NAME}
    assert "grpc" not in container["livenessProbe"]  # a draining pod is not dead

    # The embedded config is valid, selects models that exist, and fits the pod.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    config_arg = container["args"][container["args"].index("--config") + 1]
    assert Path(config_arg).parent == Path(mount["mountPath"])
    cm_name = next(v["configMap"]["name"] for v in pod["spec"]["volumes"] if v["name"] == "config")
    config = tmp_path / Path(config_arg).name
    config.write_text(objs[("ConfigMap", cm_name)]["data"][config.name])
    settings = load_settings(config)
    assert settings.server.port == ports["grpc"]
    assert settings.server.metrics_port == ports["metrics"]
    assert settings.store.backend == "redis"
    assert settings.store.redis_url_env in {e["name"] for e in container["env"]}
    assert pod["spec"]["terminationGracePeriodSeconds"] >= settings.server.drain_grace_s + 30
    repo = ModelRepository(settings.models_dir)
    for kind in ("vad", "stt", "llm", "tts", "embed"):
        assert getattr(settings.models, kind) in repo.available(), kind

    # The Services reach the pods' named ports; the PDB and HPA target these pods.
    for name in ("voxline", "voxline-headless"):
        svc = objs[("Service", name)]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    assert objs[("PodDisruptionBudget", "voxline")]["spec"]["selector"]["matchLabels"] \
        .items() <= labels.items()
    hpa = objs[("HorizontalPodAutoscaler", "voxline")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "voxline"
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == "voxline_active_calls"
    target = float(metric["pods"]["target"]["averageValue"])
    assert 0 < target < settings.limits.max_concurrent_calls
    assert hpa["minReplicas"] >= 2  # a PDB of maxUnavailable 1 leaves one serving

    # The store the config names exists in the bundle.
    redis = objs[("Service", "voxline-redis")]
    assert redis["spec"]["selector"].items() <= \
        objs[("Deployment", "voxline-redis")]["spec"]["template"]["metadata"]["labels"].items()
