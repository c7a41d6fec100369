"""deploy/: the KubeRay RayService manifest and the Dockerfile, checked offline (no cluster, no
Docker): the YAML parses, every Ray pod runs the one image, the API key comes from a Secret mounted
where the command line reads it, and that command line is one `lga-export serve` accepts, built
into the very Serve applications `serve` deploys (without starting Ray)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "rayservice.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"


@pytest.fixture(scope="module")
def service() -> dict:
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert len(documents) == 1 and documents[0]["kind"] == "RayService", [d.get("kind") for d in documents]
    assert documents[0]["apiVersion"] == "ray.io/v1"
    return documents[0]


@pytest.fixture(scope="module")
def serve_config(service) -> dict:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def _pod_specs(service) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))


def test_every_pod_runs_the_image_the_dockerfile_builds(service) -> None:
    images = {c["image"] for spec in _pod_specs(service) for c in spec["containers"]}
    assert len(images) == 1, images
    image = images.pop()
    name, _, tag = image.rpartition(":")
    assert name.endswith("/lga-export-serve") and tag and tag != "latest", image
    assert f"-t {image} " in DOCKERFILE.read_text(), "the Dockerfile's build line names another image"
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == _dockerfile_args()["RAY_VERSION"]


def test_the_dockerfile_installs_cpu_and_serve_from_this_tree() -> None:
    text = DOCKERFILE.read_text()
    assert _dockerfile_args()["EXTRAS"] == "cpu,serve"
    assert 'pip install --no-cache-dir ".[${EXTRAS}]"' in text
    assert "EXTRAS=gpu,serve" in text, "the GPU variant is not noted"
    for source in re.findall(r"^COPY (?!--)(\S+(?: \S+)*) \S+$", text, flags=re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"the Dockerfile copies {path}, which this tree lacks"
    rules = [line for line in (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*" and not any(".venv" in rule or "runs" in rule for rule in rules[1:]), \
        "the build context would hold .venv, runs/ or data"


def test_the_api_key_comes_from_a_secret_mounted_where_serve_reads_it(service, serve_config) -> None:
    key_files = set()
    for app in serve_config["applications"]:
        argv = shlex.split(app["args"]["command"])
        key_files.add(argv[argv.index("--api-key-file") + 1])
    assert len(key_files) == 1, key_files
    key_dir = str(Path(key_files.pop()).parent)
    for spec in _pod_specs(service):
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        assert secrets, "a pod without the API key Secret"
        for container in spec["containers"]:
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert key_dir in mounts and mounts[key_dir]["name"] in secrets, container["name"]
            assert mounts[key_dir].get("readOnly") is True
            assert "lga-api-key" in secrets.values()
            assert "LGA_API_KEY" not in str(container.get("env", "")), "the key given twice"


def test_serve_config_is_valid_for_ray_serve(service, serve_config) -> None:
    """serveConfigV2 against Ray Serve's own schema (what `serve deploy` and KubeRay submit)."""
    schema = pytest.importorskip("ray.serve.schema", reason="ray[serve] is not installed")
    parsed = schema.ServeDeploySchema.model_validate(serve_config)
    assert str(parsed.proxy_location.value) == "HeadOnly" and parsed.http_options.port == 8000
    assert sorted(a.name for a in parsed.applications) == ["lga", "lga-health"]
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": 8000, "name": "serve"} in head["ports"], "KubeRay's serve Service needs the port"


def test_serve_config_names_the_two_applications_of_lga_export_serve(serve_config) -> None:
    assert serve_config["proxy_location"] == "HeadOnly"
    assert serve_config["http_options"]["host"] == "0.0.0.0"
    apps = {a["route_prefix"]: a for a in serve_config["applications"]}
    assert apps["/"]["import_path"] == "lga_export.cli.rayservice:segmenter"
    assert apps["/v1/health"]["import_path"] == "lga_export.cli.rayservice:health"
    assert len({a["args"]["command"] for a in apps.values()}) == 1, "the two applications differ"


def test_the_command_line_is_one_serve_accepts(serve_config) -> None:
    """Parsed with `lga-export serve`'s own Click command (make_context), no server started."""
    from typer.main import get_command

    from lga_export.cli.main import app

    command = serve_config["applications"][0]["args"]["command"]
    argv = shlex.split(command)
    assert argv[:2] == ["lga-export", "serve"]
    params = get_command(app).commands["serve"].make_context("lga-export serve", argv[2:]).params
    assert params["replicas"] == 2 and params["cpus_per_replica"] == 2.0 and params["max_batch"] == 8
    assert str(params["model"]) == "/models/lga"


def test_the_builders_make_what_serve_deploys(serve_config, tmp_path, monkeypatch) -> None:
    """The manifest's line, with this machine's model (the embedded one) and a key file here,
    becomes the deployment `lga-export serve` would run: replicas, CPUs, batching, the key's digest."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install \"lga-export[serve]\")")
    from lga_export.cli import rayservice
    from lga_export.serve.auth import key_digest

    key = "k" * 32
    (tmp_path / "api-key").write_text(key + "\n")
    monkeypatch.delenv("LGA_API_KEY", raising=False)
    command = serve_config["applications"][0]["args"]["command"]
    command = command.replace("--model /models/lga ", "").replace("/etc/lga/api-key", str(tmp_path / "api-key"))
    settings, options = rayservice.plan(rayservice.parse(command))
    assert settings.api_key_sha256 == key_digest(key) and settings.max_batch == 8
    assert options["num_replicas"] == 2 and options["ray_actor_options"] == {"num_cpus": 2.0}
    # as Serve's controller builds an application from serveConfigV2: import_attr(import_path), then the builder
    from ray._common.utils import import_attr
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    for app in serve_config["applications"]:
        built = call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), {"command": command})
        assert isinstance(built, Application), app["name"]


@pytest.mark.parametrize("extra, words", [
    ("--host 0.0.0.0", "http_options.host"),
    ("--proxy-location EveryNode", "proxy_location"),
    ("--bogus 1", "No such option"),
])
def test_the_builders_refuse_what_a_rayservice_cannot_honour(extra: str, words: str, tmp_path) -> None:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install \"lga-export[serve]\")")
    from lga_export.errors import LGAError
    from lga_export.cli import rayservice

    (tmp_path / "key").write_text("k" * 32)
    with pytest.raises(LGAError, match=re.escape(words)) as caught:
        rayservice.plan(rayservice.parse(f"lga-export serve --api-key-file {tmp_path / 'key'} {extra}"))
    assert "\n" not in str(caught.value)


def test_a_rayservice_without_a_key_is_refused(monkeypatch) -> None:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install \"lga-export[serve]\")")
    from lga_export.errors import LGAError
    from lga_export.cli import rayservice

    monkeypatch.delenv("LGA_API_KEY", raising=False)
    with pytest.raises(LGAError, match="--api-key-file"):
        rayservice.plan(rayservice.parse("lga-export serve --replicas 1"))
    with pytest.raises(LGAError, match="lga-export serve"):
        rayservice.parse("python -m something")
