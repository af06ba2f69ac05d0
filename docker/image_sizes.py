"""Size of the OpenRecon image by part, measured inside the image (stdlib only).

Run inside the image, e.g. ``buildah run CONTAINER -- python -c "$(cat docker/image_sizes.py)"``
(docker/build.sh and tests/test_container.py do). Prints one JSON object, sizes in bytes of
regular files (each hard-linked file once, symlinks 0):

    parts          interpreter (Python, its standard library, the shared libraries, /bin/sh,
                   time zones: everything outside /opt), libraries (the venv's third-party
                   packages), application (openrecon_stroke), models, templates
    libraries      per distribution, largest first (``X.libs/`` and ``X-*.dist-info`` with ``X``)
    models         per model folder
    total          sum of the parts (the image's own size adds tar headers, about 1 %)
"""

import json
import os
import re
import sys

MODELS = "/opt/openrecon-stroke/models"
TEMPLATES = "/opt/openrecon-stroke/templates"
VENV = "/opt/venv"
APP = ("openrecon_stroke", "openrecon-stroke")
SKIP = {"/proc", "/sys", "/dev"}
ALIASES = {"pil": "pillow"}


def library_key(name):
    base = re.split(r"[-.]", name, maxsplit=1)[0].lower()
    return ALIASES.get(base, base)


def classify(path):
    """(part, detail) of one file path."""
    if path.startswith(MODELS + "/"):
        rel = path[len(MODELS) + 1:]
        return "models", rel.split("/")[0] if "/" in rel else "(top level)"
    if path.startswith(TEMPLATES + "/"):
        return "templates", ""
    if path.startswith(VENV + "/"):
        m = re.match(re.escape(VENV) + r"/lib/python[\d.]+/site-packages/([^/]+)", path)
        if m is None:
            return "libraries", "(venv scripts)"
        top = m.group(1)
        if top.replace("_", "-").lower().startswith(APP[1]):
            return "application", top
        return "libraries", library_key(top)
    return "interpreter", ""


def main():
    parts = {k: 0 for k in ("interpreter", "libraries", "application", "models", "templates")}
    details = {"libraries": {}, "models": {}}
    seen = set()
    for root, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP]
        for f in files:
            p = os.path.join(root, f)
            st = os.lstat(p)
            if not os.path.isfile(p) or os.path.islink(p) or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            part, detail = classify(p)
            parts[part] += st.st_size
            if part in details:
                details[part][detail] = details[part].get(detail, 0) + st.st_size
    out = {"parts": parts, "total": sum(parts.values())}
    for k, d in details.items():
        out[k] = dict(sorted(d.items(), key=lambda kv: -kv[1]))
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
