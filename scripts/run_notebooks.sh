#!/usr/bin/env bash
# Runs the code of every notebook in notebooks/ as plain Rust programs, so CI checks that the
# notebooks still work without installing Jupyter or the evcxr kernel. Needs only cargo and
# python3 (standard library).
#
# What it does, per notebook:
#   1. takes its code cells in order (markdown cells are skipped);
#   2. reads the `:dep NAME = SPEC` lines into the [dependencies] of one temporary crate (a
#      `path = "..."` is resolved against notebooks/, as evcxr does) and drops every other line
#      starting with `:` (evcxr commands such as `:opt`);
#   3. puts the cells, in order, into the body of one function returning
#      `Result<(), Box<dyn std::error::Error>>`, so `?` works as in evcxr (an error is printed
#      with Display and exits 1) and the items of a cell (`use`, `fn`, `struct`, `impl`) stay
#      visible to the later cells;
#   4. a cell whose last line is an expression (evcxr would display its value) gets that line
#      printed with `{:?}`, as evcxr shows it; a multi-line trailing expression is refused,
#      end it with `;` in the notebook instead.
# The programs are binaries of a crate generated under target/notebook-check/, built in
# release mode with the repository's own target directory and Cargo.lock, so the dependencies
# (candle, ...) already built by `cargo build --release` are reused. Each program runs with
# notebooks/ as its working directory, like the kernel, and writes its files under
# target/notebooks/, as the notebooks do.
#
# Exit status: non-zero when a notebook fails to build or to run. Usage:
#   bash scripts/run_notebooks.sh                 # every notebooks/*.ipynb
#   bash scripts/run_notebooks.sh quickstart      # only notebooks/quickstart.ipynb
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

crate="$repo/target/notebook-check"
if [ "$#" -gt 0 ]; then
    notebooks=()
    for name in "$@"; do notebooks+=("notebooks/${name%.ipynb}.ipynb"); done
else
    notebooks=(notebooks/*.ipynb)
fi
for nb in "${notebooks[@]}"; do
    [ -f "$nb" ] || { echo "error: no notebook $nb" >&2; exit 1; }
done

rm -rf "$crate/src"
mkdir -p "$crate/src/bin"

python3 - "$repo" "$crate" "${notebooks[@]}" <<'PY'
import json
import os
import re
import sys
import tomllib

repo, crate, notebooks = sys.argv[1], sys.argv[2], sys.argv[3:]

DEP = re.compile(r"^:dep\s+([A-Za-z0-9_-]+)\s*=\s*(.+)$")


def fail(msg):
    sys.exit(f"error: {msg}")


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    fail(f"unsupported value {v!r} in the [profile] of Cargo.toml")


def profile_tables(prefix, table, out):
    """Flattens [profile...] into TOML sections, nested tables as dotted (quoted) headers."""
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if scalars:
        out.append(f"[{prefix}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        out.append("")
    for k, v in table.items():
        if isinstance(v, dict):
            profile_tables(f"{prefix}.{json.dumps(k)}", v, out)


def dep_spec(name, spec, nb):
    """The TOML of one `:dep`, with a relative path made absolute (relative to the notebook)."""
    m = re.search(r'path\s*=\s*"([^"]*)"', spec)
    if m:
        path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(nb)), m.group(1)))
        spec = spec[: m.start(1)] + path.replace("\\", "/") + spec[m.end(1):]
    try:
        tomllib.loads(f"{name} = {spec}")
    except tomllib.TOMLDecodeError as e:
        fail(f"{nb}: `:dep {name} = {spec}` is not valid TOML: {e}")
    return spec


def trailing_expression(lines, where):
    """Index of the cell's last code line when it is an expression evcxr would display."""
    code = [i for i, l in enumerate(lines) if l.strip() and not l.strip().startswith("//")]
    if not code:
        return None
    last = lines[code[-1]].rstrip()
    if last.endswith((";", "}", "{")) or last.lstrip().startswith("#"):
        return None
    prev = lines[code[-2]].rstrip() if len(code) > 1 else ";"
    if not prev.endswith((";", "}", "{")) or last.lstrip().startswith((".", ")", "]", "?")):
        fail(f"{where} ends with a multi-line expression: end it with `;` (or print it)")
    return code[-1]


deps = {}
bins = []
for nb in notebooks:
    name = os.path.splitext(os.path.basename(nb))[0]
    with open(nb, encoding="utf-8") as f:
        doc = json.load(f)
    body = []
    n_code = 0
    for cell in doc.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        n_code += 1
        src = cell.get("source", "")
        lines = ("".join(src) if isinstance(src, list) else src).split("\n")
        kept = []
        for line in lines:
            s = line.strip()
            if s.startswith(":"):
                m = DEP.match(s)
                if m:
                    dep, spec = m.group(1), dep_spec(m.group(1), m.group(2).strip(), nb)
                    if deps.get(dep, spec) != spec:
                        fail(f"{nb}: `:dep {dep}` differs from another notebook's ({deps[dep]})")
                    deps[dep] = spec
                continue
            kept.append(line)
        where = f"{nb}, code cell {n_code}"
        t = trailing_expression(kept, where)
        if t is not None:
            kept[t] = f"println!(\"{{:?}}\", {kept[t].strip()});"
        body.append(f"// ---- {where}")
        body.extend("    " + l if l.strip() else "" for l in kept)
    if n_code == 0:
        fail(f"{nb} has no code cells")
    program = [
        f"// Generated by scripts/run_notebooks.sh from {os.path.relpath(nb, repo)}; do not edit.",
        "#![allow(unused_imports, unused_variables, unused_mut, dead_code)]",
        "",
        "fn main() {",
        "    if let Err(e) = notebook() {",
        '        eprintln!("error: {e}");',
        "        std::process::exit(1);",
        "    }",
        "}",
        "",
        "fn notebook() -> Result<(), Box<dyn std::error::Error>> {",
        *body,
        "    Ok(())",
        "}",
        "",
    ]
    bin_name = "nb_" + re.sub(r"[^A-Za-z0-9_]", "_", name)
    with open(os.path.join(crate, "src", "bin", bin_name + ".rs"), "w", encoding="utf-8") as f:
        f.write("\n".join(program))
    bins.append(bin_name)

with open(os.path.join(repo, "Cargo.toml"), "rb") as f:
    manifest = tomllib.load(f)
profiles = []
for pname, table in manifest.get("profile", {}).items():
    profile_tables(f"profile.{pname}", table, profiles)

toml = [
    "# Generated by scripts/run_notebooks.sh; do not edit.",
    "[package]",
    'name = "notebook-check"',
    'version = "0.0.0"',
    f'edition = {json.dumps(manifest.get("workspace", {}).get("package", {}).get("edition", "2021"))}',
    "publish = false",
    "autobins = true",
    "",
    "[workspace]",
    "",
    "[dependencies]",
    *(f"{k} = {v}" for k, v in deps.items()),
    "",
    *profiles,
]
with open(os.path.join(crate, "Cargo.toml"), "w", encoding="utf-8") as f:
    f.write("\n".join(toml))
with open(os.path.join(crate, "bins.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(bins) + "\n")
PY

# Same resolved versions as the repository, so the shared target directory is reused.
cp Cargo.lock "$crate/Cargo.lock"
export CARGO_TARGET_DIR="$repo/target"
echo "=== building ${#notebooks[@]} notebook program(s) (release)"
cargo build --release --manifest-path "$crate/Cargo.toml" --bins

mkdir -p target/notebooks
failed=()
for nb in "${notebooks[@]}"; do
    name=$(basename "$nb" .ipynb)
    bin="nb_${name//[^A-Za-z0-9_]/_}"
    log="$crate/$name.log"
    echo
    echo "=== $nb"
    start=$(date +%s.%N)
    if (cd notebooks && "$CARGO_TARGET_DIR/release/$bin") >"$log" 2>&1; then
        status=ok
    else
        status="FAILED (exit $?)"
        failed+=("$nb")
    fi
    secs=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
    # The last lines of its output; embedded images (evcxr display blocks) are elided.
    python3 - "$log" <<'PY'
import sys
lines, skip = [], False
for line in open(sys.argv[1], encoding="utf-8", errors="replace").read().splitlines():
    if line.startswith("EVCXR_BEGIN_CONTENT"):
        skip = True
        lines.append(f"[{line.split()[1] if len(line.split()) > 1 else 'content'} display]")
    elif line.startswith("EVCXR_END_CONTENT"):
        skip = False
    elif not skip:
        lines.append(line)
print("\n".join(lines[-15:]))
PY
    echo "--- $nb: $status in ${secs} s (full output: ${log#"$repo"/})"
done

echo
if [ "${#failed[@]}" -gt 0 ]; then
    echo "notebooks that failed: ${failed[*]}"
    exit 1
fi
echo "all ${#notebooks[@]} notebook(s) ran"
