"""deploy/: the KubeRay manifests and Dockerfiles agree with each other and with the code they run.

Every YAML document under deploy/ is parsed (the job files and the RayJob template embedded in ConfigMaps
too); images must be the Dockerfiles' intended tags; the GPU group must ask for one GPU per pod; every
entrypoint must parse with the real `embedjob` argparse parser and its job file must validate as a JobSpec.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs import nightly
from jobs.cli import build_parser, load_spec

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERAY = DEPLOY / "kuberay"
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile.cpu", "gpu": DEPLOY / "Dockerfile.gpu"}


def _docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for k, doc in enumerate(yaml.safe_load_all(path.read_text())):
            assert isinstance(doc, dict), f"{path.name} document {k}: expected a mapping, got {doc!r}"
            docs.append({**doc, "_file": path.name})
    return docs


DOCS = _docs()


def _find(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in DOCS if d.get("kind") == kind and (name is None or d["metadata"].get("name") == name)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = _find(kind, name)
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/kuberay, found {len(found)}"
    return found[0]


def _containers(obj: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every container spec anywhere under `obj`, with a readable path."""
    out = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                out += [(f"{where}.{key}[{i}]", c) for i, c in enumerate(value)]
            else:
                out += _containers(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _containers(value, f"{where}[{i}]")
    return out


def _dockerfile_arg(variant: str, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILES[variant].read_text(), re.M)
    assert match, f"{DOCKERFILES[variant].name}: no `ARG {name}=...` pin"
    return match.group(1)


def _intended_image(variant: str) -> str:
    match = re.search(r"^# image: (\S+)$", DOCKERFILES[variant].read_text(), re.M)
    assert match, f"{DOCKERFILES[variant].name}: no `# image: REGISTRY/NAME:TAG` line"
    return match.group(1)


def _job_files() -> dict[str, str]:
    return _one("ConfigMap", "embedjob-jobs")["data"]


NIGHTLY_TEMPLATE = KUBERAY / "nightly" / "rayjob.yaml"


def _nightly_template() -> dict[str, Any]:
    return yaml.safe_load(NIGHTLY_TEMPLATE.read_text())


def test_the_nightly_template_is_one_file_the_configmap_is_generated_from() -> None:
    """The CronJob's ConfigMap and `--template` by hand read the same file (no copy inside a manifest)."""
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    generated = {g["name"]: g for g in kustomization["configMapGenerator"]}
    entry = generated["embedjob-nightly-template"]
    assert entry["files"] == ["rayjob.yaml=nightly/rayjob.yaml"] and entry["options"]["disableNameSuffixHash"]
    assert _nightly_template()["kind"] == "RayJob"
    assert not _find("ConfigMap", "embedjob-nightly-template")  # generated, not written by hand


def _rayjobs() -> list[tuple[str, dict[str, Any]]]:
    """The RayJobs as they will be created: the one-off, and tonight's from the nightly template."""
    now = dt.datetime(2026, 11, 25, 2, 0, tzinfo=dt.timezone.utc)
    tonight = nightly.nightly_rayjob(
        _nightly_template(), "s3://b/nightly", now, "s3://b/nightly/20261124T020000Z"
    )
    first_night = nightly.nightly_rayjob(_nightly_template(), "s3://b/nightly", now, None)
    return [(d["_file"], d) for d in _find("RayJob")] + [("nightly", tonight), ("first night", first_night)]


# ---------------------------------------------------------------- images


def test_images_are_the_dockerfiles_tags() -> None:
    cpu, gpu = _intended_image("cpu"), _intended_image("gpu")
    assert cpu != gpu
    for variant, image in (("cpu", cpu), ("gpu", gpu)):
        assert f"-t {image} ." in DOCKERFILES[variant].read_text(), (
            f"{variant}: build command does not tag {image}"
        )
    seen = []
    for doc in DOCS + [_nightly_template()]:
        for where, container in _containers(doc):
            assert container.get("image") in (cpu, gpu), (
                f"{doc.get('_file', 'nightly template')} {doc['kind']}{where}: image {container.get('image')!r} "
                f"is not one the Dockerfiles build ({cpu!r}, {gpu!r})"
            )
            seen.append(container["image"])
    cluster = _one("RayCluster", "embedjob")["spec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == cpu
    gpu_group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu_group["template"]["spec"]["containers"][0]["image"] == gpu
    # The CronJob needs kubectl, which only the CPU image installs.
    cron = _one("CronJob", "embedjob-nightly")
    assert [c["image"] for _, c in _containers(cron)] == [cpu]
    assert "kubectl" in DOCKERFILES["cpu"].read_text()
    kustomize = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    assert {f"{i['name']}:{i['newTag']}" for i in kustomize["images"]} == {cpu, gpu}


def test_dockerfiles_pin_one_python_ray_and_torch() -> None:
    import ray

    for name in ("PYTHON_VERSION", "RAY_VERSION", "TORCH_VERSION"):
        assert _dockerfile_arg("cpu", name) == _dockerfile_arg("gpu", name), (
            f"{name} differs between the images"
        )
    ray_version = _dockerfile_arg("cpu", "RAY_VERSION")
    assert ray_version == ray.__version__, (
        f"images pin ray {ray_version}, the tests run ray {ray.__version__}"
    )
    assert _one("RayCluster", "embedjob")["spec"]["rayVersion"] == ray_version
    assert _dockerfile_arg("cpu", "TORCH_INDEX_URL").endswith("/whl/cpu")
    assert re.search(r"/whl/cu\d+$", _dockerfile_arg("gpu", "TORCH_INDEX_URL"))
    assert _dockerfile_arg("gpu", "CUDA_IMAGE").startswith("nvidia/cuda:")
    for variant, path in DOCKERFILES.items():
        text = path.read_text()
        assert '"torch==${TORCH_VERSION}"' in text and '"ray[default]==${RAY_VERSION}"' in text, variant
        for copied in ("pyproject.toml", "README.md", "embedder", "jobs"):
            assert re.search(rf"^COPY .*\b{re.escape(copied)}\b", text, re.M), (
                f"{path.name} does not copy {copied}"
            )
            assert (DEPLOY.parent / copied).exists(), (
                f"{path.name} copies {copied}, which the repository lacks"
            )


# ---------------------------------------------------------------- cluster shape


def test_gpu_worker_group_autoscales_one_gpu_per_pod() -> None:
    cluster = _one("RayCluster", "embedjob")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"] == {"mode": "token", "secretName": "embedjob-ray-token"}
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpu_group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    worker = gpu_group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert 0 == gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    # Every job file's replicas must fit the group, one GPU each, or its actors wait for pods forever.
    for key, text in _job_files().items():
        compute = yaml.safe_load(text)["compute"]
        assert compute["gpus_per_replica"] == 1, key
        assert compute["replicas"] <= gpu_group["maxReplicas"], f"{key}: replicas > gpu maxReplicas"
        cpus = int(worker["resources"]["limits"]["cpu"])
        assert compute["cpus_per_replica"] <= cpus, (
            f"{key}: cpus_per_replica {compute['cpus_per_replica']} > {cpus}"
        )


def test_credentials_come_from_the_cluster_not_the_manifests() -> None:
    for doc in DOCS:
        for where, container in _containers(doc):
            for env in container.get("env", []):
                assert "value" not in env or not re.search(r"KEY|SECRET|TOKEN|PASSWORD", env["name"]), (
                    f"{doc['_file']}{where}: {env['name']} has a literal value; use a Secret or the pod's role"
                )
    cluster = _one("RayCluster", "embedjob")["spec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        assert pod["serviceAccountName"] == "embedjob"
        assert {"secretRef": {"name": "embedjob-storage", "optional": True}} in pod["containers"][0][
            "envFrom"
        ]
    readme = (DEPLOY / "README.md").read_text()
    for name in ("embedjob-ray-token", "embedjob-storage", "RAY_AUTH_TOKEN", "--env"):
        assert name in readme, f"deploy/README.md does not explain {name}"


# ---------------------------------------------------------------- entrypoints


def _head_mounts() -> dict[str, str]:
    """Mount path -> ConfigMap name on the head container (where the job driver runs)."""
    spec = _one("RayCluster", "embedjob")["spec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v}
    return {
        m["mountPath"]: volumes[m["name"]]
        for m in spec["containers"][0]["volumeMounts"]
        if m["name"] in volumes
    }


@pytest.mark.parametrize("label,rayjob", _rayjobs(), ids=lambda x: x if isinstance(x, str) else "")
def test_rayjob_entrypoint_is_a_valid_embedjob_run(label: str, rayjob: dict, tmp_path: Path) -> None:
    assert rayjob["spec"]["clusterSelector"] == {"ray.io/cluster": "embedjob"}, label
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["embedjob", "run"], f"{label}: entrypoint {argv!r} is not `embedjob run ...`"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.job and args.no_progress, label
    # The job file must be one the head mounts from a ConfigMap, and it must validate with the flags applied.
    mount, key = args.job.rsplit("/", 1)
    assert _head_mounts().get(mount) == "embedjob-jobs", f"{label}: {args.job} is not mounted on the head"
    assert key in _job_files(), f"{label}: ConfigMap embedjob-jobs has no {key!r}"
    local = tmp_path / key
    local.write_text(_job_files()[key])
    args.job = str(local)
    spec = load_spec(args)
    assert spec.output.uri and spec.compute.device == "cuda"
    if label.startswith("nightly"):
        assert spec.output.uri == "s3://b/nightly/20261125T020000Z"
        assert args.previous == "s3://b/nightly/20261124T020000Z"


def test_cronjob_runs_the_nightly_templater_and_may_create_rayjobs() -> None:
    cron = _one("CronJob", "embedjob-nightly")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:2] == ["/bin/sh", "-ec"]
    script = shlex.split(container["command"][2])
    split = script.index(">")
    python_argv, rest = script[:split], script[split:]
    assert python_argv[:3] == ["python", "-m", "jobs.nightly"]
    env = {e["name"]: e["value"] for e in container["env"]}
    args = nightly.build_nightly_parser().parse_args(
        [a.replace("$NIGHTLY_PREFIX", env["NIGHTLY_PREFIX"]) for a in python_argv[3:]]
    )
    assert args.command == "nightly-rayjob" and args.prefix.startswith("s3://")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["configMap"]["name"] for v in pod["volumes"]}
    mount, key = args.template.rsplit("/", 1)
    assert volumes[mounts[mount]] == "embedjob-nightly-template"
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    generated = next(
        g for g in kustomization["configMapGenerator"] if g["name"] == "embedjob-nightly-template"
    )
    assert any(f.split("=")[0] == key for f in generated["files"])
    assert rest == [">", "/tmp/rayjob.yaml", "&&", "kubectl", "create", "-f", "/tmp/rayjob.yaml"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    # Its service account may create RayJobs.
    sa = pod["serviceAccountName"]
    binding = next(b for b in _find("RoleBinding") if {"kind": "ServiceAccount", "name": sa} in b["subjects"])
    role = _one("Role", binding["roleRef"]["name"])
    assert any(
        "rayjobs" in r["resources"] and "create" in r["verbs"] and "ray.io" in r["apiGroups"]
        for r in role["rules"]
    )


def test_kustomization_lists_the_standing_resources() -> None:
    kustomize = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    standing = {p.name for p in KUBERAY.glob("*.yaml")} - {"kustomization.yaml", "rayjob-index.yaml"}
    assert set(kustomize["resources"]) == standing


def test_readme_commands_parse() -> None:
    """Every `embedjob ...` command shown in deploy/README.md is valid for the real parser."""
    text = (DEPLOY / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("embedjob "):
                commands.append(shlex.split(line)[1:])
    assert len(commands) >= 3, "deploy/README.md shows no embedjob commands"
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)
