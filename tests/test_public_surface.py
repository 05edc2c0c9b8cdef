"""What each public module exports, pinned: a change to the public surface must show up here.

Every name listed is importable and is what ``__all__`` says; the documented import paths of the
API reference (``rlmesh._sandbox`` and the flavoured faces) keep working whatever the layout.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

EXPORTS = {
    "rlmesh": {
        "EnvContract", "EnvServer", "EnvironmentException", "EpisodeResult", "Model", "ModelBase",
        "ModelError", "ModelSpec", "PROTOCOL_GENERATION", "ProtocolError", "RLMeshError",
        "RemoteEnv", "RemoteEnvBase", "RemoteVectorEnv", "RemoteVectorEnvBase", "RunResult",
        "ServerBusyError", "Space", "SpaceSpec", "SpecMismatchError", "Tensor",
        "VersionMismatchError", "__version__", "connect", "space_from_spec",
    },
    "rlmesh.numpy": {
        "Model", "MultiEndpointVectorEnv", "NumpyValue", "RemoteEnv", "RemoteVectorEnv",
        "SandboxEnv", "SandboxModel", "SandboxVectorEnv", "asarray", "ensure_available",
        "from_array", "space_from_spec", "spread_vector_env",
    },
    "rlmesh.torch": {
        "Model", "MultiEndpointVectorEnv", "RemoteEnv", "RemoteVectorEnv", "SandboxEnv",
        "SandboxModel", "SandboxVectorEnv", "TorchValue", "as_tensor", "ensure_available",
        "from_tensor", "space_from_spec", "spread_vector_env",
    },
    "rlmesh.types": {"EnvLike", "Primitive", "SpaceLike", "Value", "VectorEnvLike"},
    "rlmesh.errors": {
        "AlreadyPendingCallError", "AuthenticationError", "ContainerError", "EnvironmentException", "ImageBuildError", "ModelError",
        "NoAsyncCallError", "PackageSpecError", "ProtocolError", "RLMeshError", "RuntimeDriverError",
        "RuntimeUnavailableError", "SandboxCrashed", "SandboxError", "ServerBusyError", "SourceError",
        "SpecMismatchError", "VersionMismatchError",
    },
    "rlmesh.sb3": {"VecEnvAdapter", "as_vec_env"},
    "rlmesh.runtime": {
        "AUTO_ORDER", "Availability", "ContainerHandle", "ContainerInfo", "Health", "ImageInfo", "ImageRecipe",
        "ProgressCallback", "RunSpec", "RuntimeDriver", "get_driver", "installed_drivers",
        "owner_is_gone", "owner_labels", "reap_orphans",
    },
    "rlmesh.server": {"EnvServer", "ModelServer", "load_policy"},
    "rlmesh.client": {
        "AttachedClient", "MultiEndpointVectorEnv", "MultiEndpointVectorEnvBase", "PolicyClientBase",
        "RemoteEnv", "RemoteEnvBase", "RemoteVectorEnv", "RemoteVectorEnvBase", "connect",
    },
    "rlmesh.model": {"EpisodeResult", "LatencyStats", "Model", "ModelBase", "ModelSpec", "RunResult"},
    "rlmesh.protocol": {"EnvContract", "ErrorKind", "MODEL_KIND", "PROTOCOL_GENERATION", "REPLY_FIELDS", "Request"},
    "rlmesh._sandbox": {"CAPABILITIES", "SandboxEnvBase", "SandboxSessionBase", "SandboxVectorEnvBase"},
    "rlmesh_runtimes.engine_api": {"BuildOutput", "EngineApiDriver", "EngineClient", "build_context"},
    "rlmesh_runtimes.docker": {"DockerDriver"},
    "rlmesh_runtimes.podman": {"PodmanDriver", "default_socket"},
    "rlmesh_runtimes.cli": {"CliDriver", "ENGINE_ENV"},
    "rlmesh_runtimes.ray": {"ADDRESS_VARIABLE", "NAMESPACE", "RayDriver", "SERVER_COMMAND"},
    "rlmesh_images.recipe": {
        "APP_DIR", "HOST_CA_CERT_DIR", "SANDBOX_USER", "VENV_DIR", "is_image_name", "sandbox_recipe",
        "validate_image_name", "validate_import_name", "validate_package_spec", "validate_system_package",
    },
    "rlmesh_images.bootstrap": {
        "BASE_PACKAGES", "DEFAULT_BASE_IMAGE", "bootstrap", "build_rootfs", "debian_mirror",
        "default_base_image", "default_tarball",
    },
}


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_exports_are_pinned_and_importable(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == EXPORTS[module_name]
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{module_name}.{name}"


def test_the_flavoured_faces_declare_their_own_classes() -> None:
    import rlmesh.numpy as rnp
    import rlmesh.torch as rtorch

    for face in (rnp, rtorch):
        for name in ("RemoteEnv", "RemoteVectorEnv", "MultiEndpointVectorEnv", "SandboxEnv",
                     "SandboxVectorEnv", "Model", "SandboxModel"):
            assert getattr(face, name).__module__ == face.__name__, f"{face.__name__}.{name}"
        assert face.RemoteVectorEnv._multi_endpoint_class is face.MultiEndpointVectorEnv
        assert face.Model._clients == (face.RemoteEnv, face.RemoteVectorEnv)


def test_serving_an_env_loads_no_sandbox_runtime_model_or_cli_module() -> None:
    code = ("import sys\nfrom rlmesh import EnvServer\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('rlmesh'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60).stdout.split()
    heavy = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in
             ("sandbox", "_sandbox", "runtime", "model", "cli", "numpy", "torch", "spread")]
    assert "rlmesh.server" in " ".join(loaded) and not heavy, loaded
