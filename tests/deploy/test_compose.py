"""docker/: compose.yaml parses, everything it and the Dockerfiles reference exists, the service
image holds no torch, and the example environment is refused until its secrets are replaced.
No Docker engine is needed (none is available here)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from service.settings import ServiceSettings

from .compose_file import (
    COMPOSE_FILE,
    DOCKER_DIR,
    ENV_EXAMPLE,
    REPO,
    interpolate_tree,
    load_compose,
    read_env_file,
    referenced_variables,
    service_environment,
    volume_mounts,
)

DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")


def _compose() -> dict:
    return load_compose()


def _example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical: list[str] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if not buffer and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    out = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for instruction, args in _dockerfile_instructions(path):
        if instruction == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, flags=re.IGNORECASE)
            current = match.group(1) if match else f"stage{len(stages)}"
            stages[current] = []
        if current is not None:
            stages[current].append((instruction, args))
    return stages


def test_compose_parses_and_has_the_services() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "migrate", "api", "api-gpu"} <= set(services)
    assert services["api-gpu"]["profiles"] == ["gpu"]
    assert "profiles" not in services["api"], "the CPU api must start without a profile"


def test_every_variable_without_default_is_in_env_example() -> None:
    text = COMPOSE_FILE.read_text()
    example = _example_env()
    required = [name for name, has_default in referenced_variables(text).items() if not has_default]
    missing = [name for name in required if name not in example]
    assert not missing, f"compose.yaml needs {missing} but docker/.env.example does not define them"
    # With the example values, interpolation succeeds (no ${VAR:?} error).
    interpolate_tree(_compose(), example)


def test_referenced_files_exist() -> None:
    compose = _compose()
    example = _example_env()
    resolved = interpolate_tree(compose, example)
    for name, service in resolved["services"].items():
        build = service.get("build")
        if build:
            context = (DOCKER_DIR / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        env_files = service.get("env_file", [])
        for entry in [env_files] if isinstance(env_files, str) else env_files:
            path = entry["path"] if isinstance(entry, dict) else entry
            # docker/.env is the operator's copy of docker/.env.example (git-ignored).
            assert (DOCKER_DIR / path).name == ".env"
            assert ENV_EXAMPLE.is_file()
        for source, target in volume_mounts(service):
            assert target.startswith("/"), f"{name}: volume target {target} is not absolute"
            if source.startswith((".", "/")):
                assert (DOCKER_DIR / source).resolve().exists(), f"{name}: bind source {source}"
            else:
                assert source in compose.get("volumes", {}), f"{name}: undeclared volume {source}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copy_sources_exist(dockerfile: str) -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for instruction, args in _dockerfile_instructions(DOCKER_DIR / dockerfile):
        if instruction != "COPY" or "--from=" in args:
            continue
        *sources, _destination = shlex.split(args)
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile}: COPY {source}: not in the repo"
            assert source not in ignored, f"{dockerfile}: COPY {source} but .dockerignore drops it"


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".env", "docker/.env", "demo-data", ".git"} <= ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_service_image_installs_no_torch(dockerfile: str) -> None:
    stages = _stages(DOCKER_DIR / dockerfile)
    assert list(stages)[-1] == "service", "the last stage (the image) is named 'service'"
    runs = [args for stage in stages.values() for inst, args in stage if inst == "RUN"]
    commands = [c.strip() for r in runs for c in re.split(r"&&|;", r)]
    installs = [c for c in commands if c.startswith("pip install")]
    assert installs, f"{dockerfile}: no pip install"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for run in installs:
        assert "torch" not in run, f"{dockerfile}: installs torch: {run}"
        # `pip install .` or `.[tables]`: only extras without torch (train would pull it).
        for named in re.findall(r"\.\[([^\]]*)\]", run):
            for extra in named.split(","):
                assert extra in extras, f"{dockerfile}: unknown extra {extra}: {run}"
                assert not [d for d in extras[extra] if d.lower().startswith("torch")], run
        assert " -e " not in f" {run} ", f"{dockerfile}: editable install in an image"
    named_extras = {
        e for run in installs for n in re.findall(r"\.\[([^\]]*)\]", run) for e in n.split(",")
    }
    assert "tables" in named_extras, "Parquet/CSV import needs pyarrow"
    assert "detect" in named_extras, "photo detection and the crop face check need dlib"
    assert any("pip show torch" in r for r in runs), "the build asserts torch is absent"
    # The runtime stage gets the venv from the builder and runs as a non-root user.
    service = stages["service"]
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in service
    users = [args for inst, args in service if inst == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert any(inst == "HEALTHCHECK" and "/readyz" in args for inst, args in service)
    # The base dependencies (what `pip install .` installs) hold no torch.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("torch")]


def test_gpu_image_swaps_onnxruntime_and_requires_cuda() -> None:
    stages = _stages(DOCKER_DIR / "Dockerfile.gpu")
    runs = " ".join(args for inst, args in stages["builder"] if inst == "RUN")
    uninstall = runs.index("pip uninstall -y onnxruntime")
    install_gpu = runs.index("onnxruntime-gpu")
    assert uninstall < install_gpu, "remove the CPU onnxruntime BEFORE installing onnxruntime-gpu"
    base = [args for inst, args in _dockerfile_instructions(DOCKER_DIR / "Dockerfile.gpu")]
    assert any("nvidia/cuda:" in a and "runtime" in a for a in base)
    env = " ".join(args for inst, args in stages["service"] if inst == "ENV")
    assert "FACEBRIDGE_DEVICE=cuda" in env and "FACEBRIDGE_REQUIRE_CUDA=true" in env
    settings = ServiceSettings(device="cuda", require_cuda=True)
    assert settings.providers[0] == "CUDAExecutionProvider"


def test_compose_wiring() -> None:
    services = interpolate_tree(_compose(), _example_env())["services"]
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(target == "/var/lib/postgresql/data" for _, target in volume_mounts(postgres))
    migrate = services["migrate"]
    assert migrate["command"] == ["alembic", "upgrade", "head"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart") == "no"
    for name in ("api", "api-gpu", "api-milvus"):
        api = services[name]
        assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "/readyz" in " ".join(api["healthcheck"]["test"])
        targets = {target for _, target in volume_mounts(api)}
        env = service_environment(api, compose_dir=DOCKER_DIR, env_file_values={})
        assert "/models" in targets
        assert str(Path(env["FACEBRIDGE_INDEX_PATH"]).parent) in targets
        assert env["FACEBRIDGE_TRANSFORMERS_DIR"] in targets
        assert env["FACEBRIDGE_BACKBONE_MANIFEST"].startswith("/models/")
    gpu = services["api-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert (
        service_environment(gpu, compose_dir=DOCKER_DIR, env_file_values={})[
            "FACEBRIDGE_REQUIRE_CUDA"
        ]
        == "true"
    )


def test_api_command_matches_the_image_cmd() -> None:
    cmd = next(
        args
        for inst, args in reversed(_dockerfile_instructions(DOCKER_DIR / "Dockerfile"))
        if inst == "CMD"
    )
    import json

    assert _compose()["services"]["api"]["command"] == json.loads(cmd)


def test_env_example_placeholders_are_refused() -> None:
    """Copying .env.example without editing it must not start a service."""
    example = _example_env()
    assert example["FACEBRIDGE_ADMIN_KEY"]
    with pytest.raises(ValueError, match="placeholder"):
        ServiceSettings(admin_key=example["FACEBRIDGE_ADMIN_KEY"])
    env = service_environment(
        interpolate_tree(_compose(), example)["services"]["api"],
        compose_dir=DOCKER_DIR,
        env_file_values=example,
    )
    with pytest.raises(ValueError, match="placeholder"):
        ServiceSettings(database_url=env["FACEBRIDGE_DATABASE_URL"])


MILVUS_PROFILE = ("milvus-etcd", "milvus-minio", "milvus", "api-milvus")


def test_milvus_profile_is_pinned_health_checked_and_wired() -> None:
    """Profile ``milvus``: Milvus standalone + etcd + object store with pinned images, health
    checks and volumes; a replica that reaches Milvus by service name; the image it builds
    carries the Milvus client."""
    compose = _compose()
    services = interpolate_tree(compose, _example_env())["services"]
    for name in MILVUS_PROFILE:
        service = services[name]
        assert service["profiles"] == ["milvus"], name
        assert service.get("healthcheck", {}).get("test"), f"{name}: no health check"
        image = service["image"]
        tag = image.rsplit(":", 1)[-1]
        if "build" not in service:  # third-party images: a pinned version, never latest
            assert ":" in image and tag != "latest" and any(c.isdigit() for c in tag), image
        for source, _ in volume_mounts(service):
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    for dependency in ("milvus-etcd", "milvus-minio"):
        assert milvus["depends_on"][dependency]["condition"] == "service_healthy"
    env = service_environment(milvus, compose_dir=DOCKER_DIR, env_file_values={})
    assert env["ETCD_ENDPOINTS"].split(":")[0] == "milvus-etcd"
    assert env["MINIO_ADDRESS"].split(":")[0] == "milvus-minio"
    minio = service_environment(
        services["milvus-minio"], compose_dir=DOCKER_DIR, env_file_values={}
    )
    assert env["MINIO_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert "/var/lib/milvus" in {t for _, t in volume_mounts(milvus)}
    api = services["api-milvus"]
    assert api["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert api["build"]["args"]["WITH_MILVUS"] == "true"
    api_env = service_environment(api, compose_dir=DOCKER_DIR, env_file_values={})
    settings = ServiceSettings(
        vector_store=api_env["FACEBRIDGE_VECTOR_STORE"], milvus_uri=api_env["FACEBRIDGE_MILVUS_URI"]
    )
    assert settings.vector_store == "milvus"
    assert settings.milvus_file_or_uri == "http://milvus:19530"
    runs = " ".join(a for i, a in _dockerfile_instructions(DOCKER_DIR / "Dockerfile") if i == "RUN")
    assert 'if [ "$WITH_MILVUS" = "true" ]; then pip install "pymilvus' in runs
    # Without its password the profile does not interpolate (no default secret).
    with pytest.raises(ValueError, match="MILVUS_MINIO_PASSWORD"):
        interpolate_tree(compose, {k: v for k, v in _example_env().items() if "MINIO" not in k})
