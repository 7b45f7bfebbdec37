"""Builds the lora package with liblora.so inside it (pip install ./python).

The library comes from $LORA_LIBRARY, else from the checkout this folder sits
in (../.build/release/liblora.so, built with `swift build -c release
--product lora` when missing). It is copied into the package as liblora.so
and under its SONAME, liblora.so.1, so `import lora` works from any folder.
The wheel is platform-specific (it carries a shared library).
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)


def find_library() -> str:
    env = os.environ.get("LORA_LIBRARY")
    if env:
        if not os.path.isfile(env):
            raise SystemExit(f"lora: LORA_LIBRARY={env} is not a file")
        return env
    built = os.path.join(CHECKOUT, ".build", "release", "liblora.so")
    if not os.path.isfile(built) and os.path.isfile(os.path.join(CHECKOUT, "Package.swift")):
        swift = shutil.which("swift") or "/opt/swift/usr/bin/swift"
        print(f"lora: building liblora.so: {swift} build -c release --product lora")
        subprocess.run([swift, "build", "-c", "release", "--product", "lora"], cwd=CHECKOUT, check=True)
    if not os.path.isfile(built):
        raise SystemExit("lora: liblora.so not found: set LORA_LIBRARY to it, or install from the source "
                         "checkout (python/ beside Package.swift)")
    return built


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        lib = find_library()
        target = os.path.join(self.build_lib, "lora")
        os.makedirs(target, exist_ok=True)
        for name in ("liblora.so", "liblora.so.1"):
            shutil.copyfile(lib, os.path.join(target, name))
            os.chmod(os.path.join(target, name), 0o755)


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithLibrary}, distclass=BinaryDistribution)
