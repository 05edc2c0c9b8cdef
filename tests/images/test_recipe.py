"""The Dockerfile generator: golden output, determinism, layer order, input validation, real builds."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from rlmesh_images import bootstrap, import_check
from rlmesh_images.recipe import (
    sandbox_recipe,
    validate_image_name,
    validate_import_name,
    validate_package_spec,
    validate_system_package,
)

from rlmesh.errors import ImageBuildError, PackageSpecError
from rlmesh.runtime.driver import ImageRecipe, RunSpec, RuntimeDriver

from .conftest import TEST_LABELS

GOLDEN = Path(__file__).parent / "golden"
# Set to regenerate the golden files after an intended change, then review the diff.
UPDATE_GOLDEN = os.environ.get("RLMESH_UPDATE_GOLDEN") == "1"


@pytest.fixture
def fake_ca_dir(tmp_path: Path) -> Path:
    # Stand-in bytes: the generator copies files, it never parses them.
    directory = tmp_path / "ca"
    directory.mkdir()
    (directory / "b-proxy.crt").write_bytes(b"fake certificate B\n")
    (directory / "a-corp.crt").write_bytes(b"fake certificate A\n")
    (directory / "ignored.pem").write_bytes(b"not a .crt file\n")
    return directory


def full_recipe(ca_dir: Path | None, **overrides: Any) -> ImageRecipe:
    arguments: dict[str, Any] = dict(
        base_image="rlmesh-base:bookworm",
        packages=["gymnasium[classic-control]==1.3.0", "numpy>=1.24,<3",
                  'pyzmq; python_version > "3.8"'],
        imports=["gymnasium", "numpy", "zmq"],
        rlmesh_requirement="rlmesh==0.2.0",
        app_files={"envs/cartpole.py": b"print('hi')\n", "README.txt": b"app\n"},
        labels={"io.rlmesh.source": "local"},
        ca_cert_dir=ca_dir,
    )
    arguments.update(overrides)
    return sandbox_recipe(**arguments)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; if intended, rerun with RLMESH_UPDATE_GOLDEN=1"


# -- golden files and determinism ---------------------------------------------------------------


def test_full_recipe_matches_golden(fake_ca_dir: Path) -> None:
    recipe = full_recipe(fake_ca_dir)
    check_golden("full.Dockerfile", recipe.dockerfile)
    assert sorted(recipe.context_files) == [
        "app/README.txt", "app/envs/cartpole.py",
        "ca-certificates/a-corp.crt", "ca-certificates/b-proxy.crt", "import_check.py",
    ]
    assert recipe.context_files["ca-certificates/a-corp.crt"] == b"fake certificate A\n"
    assert recipe.labels == {"io.rlmesh.source": "local"}


def test_minimal_recipe_matches_golden() -> None:
    recipe = sandbox_recipe(base_image="rlmesh-base:bookworm", ca_cert_dir=None)
    check_golden("minimal.Dockerfile", recipe.dockerfile)
    assert sorted(recipe.context_files) == ["import_check.py"]


def test_same_inputs_give_identical_recipe_and_tag(fake_ca_dir: Path) -> None:
    first, second = full_recipe(fake_ca_dir), full_recipe(fake_ca_dir)
    assert first.dockerfile == second.dockerfile
    assert dict(first.context_files) == dict(second.context_files)
    assert first.tag == second.tag
    assert first.tag.startswith("rlmesh-sandbox:")


def test_app_file_order_does_not_matter(fake_ca_dir: Path) -> None:
    forward = full_recipe(fake_ca_dir, app_files={"a.py": b"a", "b.py": b"b"})
    backward = full_recipe(fake_ca_dir, app_files={"b.py": b"b", "a.py": b"a"})
    assert forward.tag == backward.tag


@pytest.mark.parametrize(
    "change",
    [
        {"packages": ["gymnasium==1.2.0"]},
        {"imports": ["gymnasium"]},
        {"rlmesh_requirement": "rlmesh==0.2.1"},
        {"app_files": {"envs/cartpole.py": b"print('changed')\n"}},
        {"base_image": "rlmesh-base:trixie"},
        {"system_packages": ["libosmesa6"]},
    ],
)
def test_any_input_change_changes_tag(fake_ca_dir: Path, change: dict[str, object]) -> None:
    assert full_recipe(fake_ca_dir, **change).tag != full_recipe(fake_ca_dir).tag


def test_ca_certificate_content_is_part_of_the_tag(fake_ca_dir: Path) -> None:
    before = full_recipe(fake_ca_dir).tag
    (fake_ca_dir / "a-corp.crt").write_bytes(b"rotated certificate\n")
    assert full_recipe(fake_ca_dir).tag != before


def test_duplicates_are_dropped_keeping_order() -> None:
    recipe = sandbox_recipe(packages=["b==1", "a==1", "b==1"], imports=["b", "a", "b"],
                            ca_cert_dir=None)
    assert '"--", "b==1", "a==1"]' in recipe.dockerfile
    assert 'import_check.py", "b", "a"]' in recipe.dockerfile


def test_system_packages_are_one_sorted_layer_before_the_venv(fake_ca_dir: Path) -> None:
    recipe = full_recipe(fake_ca_dir, system_packages=["libosmesa6", "ffmpeg", "libosmesa6"])
    lines = recipe.dockerfile.splitlines()
    install = lines.index('RUN ["/bin/sh", "/opt/rlmesh/apt_install.sh", "ffmpeg", "libosmesa6"]')
    assert install < next(i for i, line in enumerate(lines) if '"-m", "venv"' in line)
    assert recipe.context_files["apt_install.sh"].startswith(b"#!/bin/sh")
    # The same set in another order is the same image; another set is another image.
    again = full_recipe(fake_ca_dir, system_packages=["ffmpeg", "libosmesa6"])
    assert again.tag == recipe.tag
    assert full_recipe(fake_ca_dir, system_packages=["ffmpeg"]).tag != recipe.tag


@pytest.mark.parametrize("name", ["libosmesa6", "libstdc++6", "python3.11-dev", "libc6:amd64",
                                  "ffmpeg=7:5.1.6-0+deb12u1"])
def test_valid_system_packages(name: str) -> None:
    assert validate_system_package(name) == name


@pytest.mark.parametrize("name, words", [
    ("-o", "is an option"), ("--allow-unauthenticated", "is an option"),
    ("libosmesa6; rm -rf /", "not a Debian package name"), ("$(reboot)", "not a Debian package name"),
    ("a b", "not a Debian package name"), ("LibGL", "not a Debian package name"),
    ("pkg\nRUN x", "not a Debian package name"), ("", "not a Debian package name"),
])
def test_system_package_injection_is_refused(name: str, words: str) -> None:
    with pytest.raises(PackageSpecError, match=words):
        validate_system_package(name)
    with pytest.raises(PackageSpecError):
        sandbox_recipe(system_packages=[name], ca_cert_dir=None)


# -- structure ------------------------------------------------------------------------------------


def test_layers_are_ordered_for_caching(fake_ca_dir: Path) -> None:
    lines = full_recipe(fake_ca_dir).dockerfile.splitlines()

    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix) or prefix in line)

    order = [
        first("FROM "),
        first("COPY ca-certificates/"),
        first('"-m", "venv"'),
        first('"gymnasium[classic-control]==1.3.0"'),
        first('"rlmesh==0.2.0"'),
        first('import_check.py", "gymnasium"'),
        first("COPY app/"),
        first('CMD ["python"]'),
    ]
    assert order == sorted(order), lines


def test_runs_as_non_root_with_python_cmd_and_no_entrypoint(fake_ca_dir: Path) -> None:
    lines = full_recipe(fake_ca_dir).dockerfile.splitlines()
    assert [line for line in lines if line.startswith("USER ")][-1] == "USER rlmesh"
    assert lines[-1] == 'CMD ["python"]'
    assert not any(line.startswith("ENTRYPOINT") for line in lines)


def test_every_run_is_exec_form_without_buildkit_features(fake_ca_dir: Path) -> None:
    for line in full_recipe(fake_ca_dir).dockerfile.splitlines():
        if line.startswith("RUN "):
            argv = json.loads(line[len("RUN "):])  # exec form: no shell parses our arguments
            assert all(isinstance(arg, str) for arg in argv)
            assert "--mount" not in line


def test_marker_reaches_pip_as_one_argument() -> None:
    recipe = sandbox_recipe(packages=['pkg; python_version > "3.8"'], ca_cert_dir=None)
    pip_line = next(line for line in recipe.dockerfile.splitlines() if '"pip"' in line)
    assert json.loads(pip_line[len("RUN "):])[-1] == 'pkg; python_version > "3.8"'


def test_venv_on_path_and_ca_bundle_for_pip(fake_ca_dir: Path) -> None:
    dockerfile = full_recipe(fake_ca_dir).dockerfile
    assert "PATH=/opt/rlmesh/venv/bin:" in dockerfile
    for variable in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        assert f"{variable}=/etc/ssl/certs/ca-certificates.crt" in dockerfile
    assert 'RUN ["update-ca-certificates"]' in dockerfile


def test_no_ca_layer_without_extra_certificates(tmp_path: Path) -> None:
    recipe = sandbox_recipe(ca_cert_dir=tmp_path / "missing")
    assert "ca-certificates/" not in recipe.dockerfile
    assert not any(name.startswith("ca-certificates/") for name in recipe.context_files)


def test_local_wheel_is_copied_into_the_context(tmp_path: Path) -> None:
    wheel = tmp_path / "rlmesh-0.2.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel bytes")
    recipe = sandbox_recipe(rlmesh_wheel=wheel, ca_cert_dir=None)
    assert recipe.context_files["wheels/rlmesh-0.2.0-py3-none-any.whl"] == b"wheel bytes"
    assert '"/opt/rlmesh/wheels/rlmesh-0.2.0-py3-none-any.whl"]' in recipe.dockerfile


def test_requirement_and_wheel_together_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(PackageSpecError, match="not both"):
        sandbox_recipe(rlmesh_requirement="rlmesh", rlmesh_wheel=tmp_path / "x.whl")


def test_base_image_defaults_to_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLMESH_BASE_IMAGE", raising=False)
    assert bootstrap.default_base_image() == "rlmesh-base:bookworm"
    assert sandbox_recipe(ca_cert_dir=None).dockerfile.splitlines()[1] == "FROM rlmesh-base:bookworm"
    monkeypatch.setenv("RLMESH_BASE_IMAGE", "localhost/my-base:1")
    assert sandbox_recipe(ca_cert_dir=None).dockerfile.splitlines()[1] == "FROM localhost/my-base:1"


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gymnasium==1.3.0", "gymnasium==1.3.0"),
        ("numpy>=1.24,<3", "numpy>=1.24,<3"),
        ("gymnasium[classic-control]==1.3.0", "gymnasium[classic-control]==1.3.0"),
        ('pkg; python_version>"3.8"', 'pkg; python_version>"3.8"'),
        ("pkg ; sys_platform == 'linux' and python_version >= '3.10'",
         "pkg; sys_platform == 'linux' and python_version >= '3.10'"),
        ("  torch~=2.1  ", "torch~=2.1"),
        ("numpy==1.*", "numpy==1.*"),
        ("my_pkg.sub-name!=0.1", "my_pkg.sub-name!=0.1"),
        ("six", "six"),
    ],
)
def test_valid_specs_are_accepted(spec: str, expected: str) -> None:
    assert validate_package_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("gymnasium\nRUN rm -rf /", "newline"),
        ("gymnasium\r", "newline"),
        ("numpy\x00", "control character"),
        ("numpy; rm -rf /", "environment marker"),
        ("numpy;rm -rf /", "environment marker"),
        ("$(curl evil.example)", "'$'"),
        ("numpy$(id)", "'$'"),
        ("`id`", "'`'"),
        ("numpy`id`", "'`'"),
        ("--index-url x", "pip option"),
        ("--index-url=https://evil.example/simple", "pip option"),
        ("-e .", "pip option"),
        ("-r requirements.txt", "pip option"),
        ("pkg && rm -rf /", "'&'"),
        ("pkg || true", "'|'"),
        ("pkg > /etc/passwd", "space"),
        ("numpy >= 1.24", "space"),
        ("pkg'", "\"'\""),
        ('pkg"', "'\"'"),
        ("pkg\\", "'\\\\'"),
        ("pkg#comment", "'#'"),
        ("pkg{a,b}", "'{'"),
        ("", "empty"),
        ("   ", "empty"),
        ("https://evil.example/pkg.whl", "URL"),
        ("pkg @ https://evil.example/pkg.whl", "URL"),
        ("git+https://github.com/x/y", "URL"),
        ("./local/dir", "not a valid requirement"),
        ("pkg==", "not a valid requirement"),
        ('pkg; os.system("id")', "environment marker"),
        ('pkg; python_version > "$(id)"', "environment marker"),
        ("pkg; python_version", "without a comparison"),
    ],
)
def test_injection_attempts_are_rejected(spec: str, reason: str) -> None:
    with pytest.raises(PackageSpecError) as caught:
        validate_package_spec(spec)
    message = str(caught.value)
    assert reason in message
    assert isinstance(caught.value, ValueError)


def test_rejection_message_names_the_spec_and_the_fix() -> None:
    with pytest.raises(PackageSpecError, match=r"'--index-url x' is a pip option.*gymnasium==1.3.0"):
        validate_package_spec("--index-url x")


def test_bad_spec_fails_recipe_generation() -> None:
    with pytest.raises(PackageSpecError, match="newline"):
        sandbox_recipe(packages=["ok==1", "bad\nRUN id"])


def test_urls_only_with_explicit_permission() -> None:
    spec = "pkg @ https://files.example.com/pkg-1.0-py3-none-any.whl"
    assert validate_package_spec(spec, allow_urls=True) == spec
    with pytest.raises(PackageSpecError, match="https only"):
        validate_package_spec("pkg @ http://files.example.com/pkg.whl", allow_urls=True)
    with pytest.raises(PackageSpecError, match="https only"):
        validate_package_spec("pkg @ https://x.example/$(id)", allow_urls=True)


@pytest.mark.parametrize("name", ["gymnasium", "gymnasium.envs.classic_control", "_private", "zmq"])
def test_valid_import_names(name: str) -> None:
    assert validate_import_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "os; import sys", "a..b", ".rel", "gym-nasium", "class", "x\ny", "os.system('id')"]
)
def test_invalid_import_names_are_rejected(name: str) -> None:
    with pytest.raises(PackageSpecError, match="dotted module path"):
        sandbox_recipe(imports=[name], ca_cert_dir=None)


@pytest.mark.parametrize(
    "name",
    ["rlmesh-base:bookworm", "localhost/rlmesh-base:bookworm", "registry.example.com:5000/a/b:1.0",
     "python@sha256:" + "a" * 64],
)
def test_valid_image_names(name: str) -> None:
    assert validate_image_name(name) == name


@pytest.mark.parametrize(
    "name", ["rlmesh-base:bookworm\nRUN id", "base image", "Upper:1", "a:b:c", "-x", "img:$(id)"]
)
def test_invalid_base_images_are_rejected(name: str) -> None:
    with pytest.raises(PackageSpecError, match="image reference"):
        sandbox_recipe(base_image=name, ca_cert_dir=None)


@pytest.mark.parametrize("path", ["../evil.py", "/etc/passwd", "a/../../b", "a//b", "a\\b", "x\n", ""])
def test_app_paths_must_stay_inside_the_app_dir(path: str) -> None:
    with pytest.raises(PackageSpecError, match="app file path"):
        sandbox_recipe(app_files={path: b""}, ca_cert_dir=None)


def test_import_check_reports_each_failure(capsys: pytest.CaptureFixture[str]) -> None:
    assert import_check.main(["json", "no_such_module_rlmesh", "os.path"]) == 1
    err = capsys.readouterr().err
    assert "ModuleNotFoundError: No module named 'no_such_module_rlmesh'" in err
    assert "cannot import no_such_module_rlmesh." in err
    assert import_check.main(["json"]) == 0


# -- real builds ----------------------------------------------------------------------------------


def _wait_exit(driver: RuntimeDriver, container_id: str, timeout: float = 60.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = driver.health(container_id)
        if not health.running:
            return health.exit_code
        time.sleep(0.2)
    raise AssertionError(f"container {container_id} still running after {timeout} s")


@pytest.mark.engine
def test_bad_import_fails_the_build_with_the_import_error(dockerd: RuntimeDriver) -> None:
    recipe = sandbox_recipe(packages=["six==1.16.0"], imports=["six", "no_such_module_rlmesh"],
                            labels=TEST_LABELS)
    try:
        with pytest.raises(ImageBuildError) as caught:
            dockerd.build(recipe)
        shown = f"{caught.value}\n{caught.value.log}"
        assert "ModuleNotFoundError: No module named 'no_such_module_rlmesh'" in shown
        assert "cannot import no_such_module_rlmesh" in shown
        assert not dockerd.image_exists(recipe.tag)
    finally:
        dockerd.remove_image(recipe.tag)


@pytest.mark.engine
def test_generated_recipe_installs_from_pypi_and_runs_as_non_root(engine: RuntimeDriver) -> None:
    recipe = sandbox_recipe(
        packages=["gymnasium==1.3.0"], imports=["gymnasium"],
        app_files={"probe.py": b"import gymnasium, os\n"
                               b"assert gymnasium.__version__ == '1.3.0'\n"
                               b"assert os.getuid() != 0\n"},
        labels=TEST_LABELS,
    )
    container_id = None
    try:
        assert engine.build(recipe) == recipe.tag
        container_id = engine.run(RunSpec(image=recipe.tag, command=["python", "probe.py"],
                                          labels=TEST_LABELS)).id
        exit_code = _wait_exit(engine, container_id)
        assert exit_code == 0, engine.logs(container_id)
    finally:
        if container_id is not None:
            engine.stop(container_id, timeout=0)
        engine.remove_image(recipe.tag)
