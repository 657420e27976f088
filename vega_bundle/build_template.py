"""Write vega_bundle/template.html: DVC's plot page with Vega, Vega-Lite and Vega-Embed inline, so it renders offline.

`dvc plots show` fills `{plot_divs}`; the template has no `{scripts}` slot, so DVC's CDN <script> tags are dropped.
Rebuild after upgrading (the npm tarballs of the versions below, e.g. from `npm pack vega@5.33.1 vega-lite@5.23.0
vega-embed@6.29.0`; vega 5's tarball has no LICENSE file, so LICENSE.vega is the one vega 6 ships, from the same
repository):  python vega_bundle/build_template.py vega-5.33.1.tgz vega-lite-5.23.0.tgz vega-embed-6.29.0.tgz
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# package -> its minified UMD build inside the npm tarball; load order matters (embed needs vega and vega-lite).
BUILDS = {"vega": "package/build/vega.min.js", "vega-lite": "package/build/vega-lite.min.js",
          "vega-embed": "package/build/vega-embed.min.js"}
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {credits}.
         Minified builds from npm, inline so that the page needs no network; each is BSD-3-Clause, copyright University of
         Washington Interactive Data Lab (full texts: vega_bundle/LICENSE.*). Rebuilt by
         vega_bundle/build_template.py. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def _read(tgz: Path, member: str) -> str:
    with tarfile.open(tgz) as t:
        return t.extractfile(member).read().decode("utf8")


def build(tarballs: list[Path]) -> str:
    scripts, credits = [], []
    for name, tgz in zip(BUILDS, tarballs, strict=True):
        meta = json.loads(_read(tgz, "package/package.json"))
        if meta["name"] != name or meta["license"] != "BSD-3-Clause":
            raise SystemExit(f"{tgz}: expected {name} under BSD-3-Clause, got {meta['name']} ({meta['license']})")
        js = _read(tgz, BUILDS[name])
        for marker in ("{plot_divs}", "{scripts}", "{refresh_tag}"):  # DVC fills these by plain replacement
            if marker in js:
                raise SystemExit(f"{tgz}: the bundle contains DVC's placeholder {marker}")
        js = js.replace("</script", "<\\/script")  # an inline script ends at the first </script
        js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL="))
        credits.append(f"{name} {meta['version']}")
        banner = f"/*! {name} {meta['version']} | BSD-3-Clause | see vega_bundle/LICENSE.{name} */"
        scripts.append(f"    <script>{banner}\n{js}\n    </script>")
    return PAGE.format(credits=", ".join(credits), scripts="\n".join(scripts))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    (HERE / "template.html").write_text(build([Path(a) for a in sys.argv[1:]]), encoding="utf8")
