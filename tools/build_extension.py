"""Builds the Blender extension zip: addon/ + the backend's protocol and client + pyzmq wheels.

    python tools/build_extension.py                 # dist/pipstrack-<version>.zip, wheels for all platforms
    python tools/build_extension.py --wheels none   # no wheels (a Blender whose Python has pyzmq; tests)
    python tools/build_extension.py --wheels host   # this platform's wheel only

The modules the add-on shares with the backend have one source, backend/pipstrack/ (the
conventions, the ``wire`` package whole, and the track file formats and exporters of ``io``);
this step copies them into the extension as ``_pipstrack/``, keeping their layout so their
relative imports hold (never edit a copy). tests/test_layout.py checks that they import with
numpy and pyzmq alone. Wheels come from the package index
(``pip download``), for Blender's Python 3.11.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "addon"
PACKAGE = ROOT / "backend" / "pipstrack"
# vendored into the extension, paths relative to the package: numpy + pyzmq + stdlib only
SHARED = (
    "conventions.py",
    "wire/__init__.py",
    "wire/protocol.py",
    "wire/client.py",
    "io/__init__.py",
    "io/formats.py",
    "io/export.py",
)
PYZMQ = "pyzmq==27.3.0"
# Blender platform tag -> pip --platform tags for a CPython 3.11 wheel
PLATFORMS = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64"],
    "macos-arm64": ["macosx_11_0_arm64", "macosx_10_15_universal2"],
    "macos-x64": ["macosx_10_15_x86_64", "macosx_10_15_universal2"],
    "windows-x64": ["win_amd64"],
}


def version() -> str:
    text = (PACKAGE / "__init__.py").read_text()
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


def host_platform() -> str:
    import platform

    machine = platform.machine().lower()
    arch = "arm64" if machine in ("arm64", "aarch64") else "x64"
    system = {"darwin": "macos", "win32": "windows"}.get(sys.platform, "linux")
    return f"{system}-{arch}"


def download_wheels(platforms: list[str], dest: Path) -> list[Path]:
    wheels = []
    for plat in platforms:
        before = set(dest.glob("*.whl"))
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            PYZMQ,
            "--only-binary=:all:",
            "--no-deps",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--dest",
            str(dest),
            "--quiet",
            "--disable-pip-version-check",
        ]
        for tag in PLATFORMS[plat]:
            cmd += ["--platform", tag]
        subprocess.run(cmd, check=True)
        new = sorted(set(dest.glob("*.whl")) - before) or [w for w in before if _fits(w.name, plat)]
        if not new:
            raise SystemExit(f"no {PYZMQ} wheel found for {plat}")
        wheels += new
    return sorted(set(wheels))


def _fits(name: str, plat: str) -> bool:
    return any(tag.split("_")[0] in name for tag in PLATFORMS[plat])


def manifest(wheels: list[str], platforms: list[str] | None) -> str:
    text = (ADDON / "blender_manifest.toml").read_text()
    text = re.sub(r'^version = ".*"$', f'version = "{version()}"', text, flags=re.M)
    extra = ""
    if platforms:
        extra += "platforms = [" + ", ".join(f'"{p}"' for p in platforms) + "]\n"
    if wheels:
        extra += "wheels = [\n" + "".join(f'  "./wheels/{w}",\n' for w in wheels) + "]\n"
    return text.replace("\n[permissions]", "\n" + extra + "\n[permissions]", 1) if extra else text


def build(out_dir: Path, wheels_mode: str = "all") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    platforms = {"none": [], "host": [host_platform()], "all": list(PLATFORMS)}[wheels_mode]
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download_wheels(platforms, Path(tmp)) if platforms else []
        suffix = "" if wheels_mode == "all" else "-" + (platforms[0] if platforms else "nowheels")
        target = out_dir / f"pipstrack-{version()}{suffix}.zip"
        partial = target.with_suffix(".zip.part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("blender_manifest.toml", manifest([w.name for w in wheels], platforms or None))
            for f in sorted(ADDON.glob("*.py")):
                z.write(f, f.name)
            z.write(ADDON / "LICENSE", "LICENSE")  # GPL-3.0-or-later, as the manifest says
            z.writestr(
                "_pipstrack/__init__.py", '"""Build-time copy of parts of the pipstrack package: do not edit."""\n'
            )
            for name in SHARED:
                z.write(PACKAGE / name, f"_pipstrack/{name}")
            for w in wheels:
                z.write(w, f"wheels/{w.name}")
        partial.replace(target)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--wheels", choices=("all", "host", "none"), default="all")
    args = ap.parse_args(argv)
    print(build(args.out, args.wheels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
