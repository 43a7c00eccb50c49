"""Print pip requirements that pin every dependency of pyproject.toml to its floor.

`.ci/floors` installs these in a fresh venv and runs a smoke test, so a declared
floor that the code has outgrown fails CI instead of a user's install. torch is
left out: the only wheel CI can install is the pinned CPU one (see README).
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
for req in project["dependencies"]:
    name, _, rest = req.partition(">=")
    name = name.strip()
    if name == "torch":
        continue
    floor, _, marker = rest.partition(";")
    marker = f"; {marker.strip()}" if marker else ""
    if not re.fullmatch(r"[0-9][0-9.]*", floor.strip()):
        sys.exit(f"{req!r}: every dependency needs a plain '>=' floor")
    print(f"{name}=={floor.strip()}{marker}")
