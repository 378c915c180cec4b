"""Import a service as its container image would: only the distributions the image installs.

Run as ``python tests/stack/image_imports.py REQUIREMENTS_FILE [--no-deps NAME ...] -- CODE``.
Every top-level module of an installed distribution that the image does not carry is put in
``sys.modules`` as ``None`` before CODE runs: ``import torch`` then fails exactly as it would in
the image, and libraries probing for optional packages (``importlib.util.find_spec``) see them as
absent. Exit status 0 means CODE ran with the image's packages alone. Run it in the folder
``image_tree`` builds (with that folder as ``PYTHONPATH``) and CODE also sees only the image's
own files.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import shutil
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Installed with --no-deps by the image, so their requirements are not followed.
FIRST_PARTY = {"shared", "services", "tests", "migrations"}


def image_tree(dockerfile: Path, repo_root: Path, destination: Path) -> Path:
    """The image's files: what the Dockerfile's ``COPY`` lines (those not from another stage) put
    under its WORKDIR, copied from ``repo_root`` into ``destination``."""
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), flags=re.M):
        *sources, target = line.split()
        for source in sources:
            origin = repo_root / source
            if origin.is_dir():
                shutil.copytree(origin, destination / target, dirs_exist_ok=True)
            else:
                placed = destination / target / origin.name if target.endswith("/") else destination / target
                placed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, placed)
    return destination


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def closure(roots: list[str], no_deps: set[str]) -> set[str]:
    """Canonical names of the distributions ``pip install roots`` brings in (from installed metadata)."""
    seen: set[str] = set()
    stack = [(Requirement(root), True) for root in roots] + [(Requirement(n), False) for n in no_deps]
    while stack:
        requirement, follow = stack.pop()
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        if not follow:
            continue
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            dependency = Requirement(spec)
            if dependency.marker is None:
                stack.append((dependency, True))
                continue
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if any(dependency.marker.evaluate(env) for env in environments):
                stack.append((dependency, True))
    return {name for name in seen if "[" not in name}


def blocked_modules(allowed: set[str]) -> set[str]:
    blocked = set()
    for module, distributions in metadata.packages_distributions().items():
        if module in FIRST_PARTY or module in sys.stdlib_module_names or not re.match(r"^\w+$", module):
            continue
        if not any(canonicalize_name(d) in allowed for d in distributions):
            blocked.add(module)
    return blocked


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    options, code = args[:split], " ".join(args[split + 1 :])
    requirements = Path(options[0])
    no_deps = {options[i + 1] for i, flag in enumerate(options) if flag == "--no-deps"}
    allowed = closure(requirement_names(requirements), no_deps)
    for module in blocked_modules(allowed):
        sys.modules[module] = None  # type: ignore[assignment]
    # This checkout is installed editable; an image holds copied files only, so first-party code
    # comes from the working directory (PYTHONPATH), never through the editable install's finder.
    sys.meta_path[:] = [
        finder for finder in sys.meta_path if not getattr(finder, "__module__", "").startswith("__editable__")
    ]
    sys.path_importer_cache.clear()
    exec(compile(code, "<image-import-check>", "exec"), {"__name__": "__image_check__"})


if __name__ == "__main__":
    main()
