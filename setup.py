"""The wheel carries farm's example recipes/ and conf/ (kept at the top of the repository) as
farm/examples/; a clone finds them beside the package. Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithExamples(build_py):
    def run(self) -> None:
        super().run()
        for kind in ("recipes", "conf"):
            target = Path(self.build_lib) / "farm" / "examples" / kind
            shutil.copytree(kind, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithExamples})
