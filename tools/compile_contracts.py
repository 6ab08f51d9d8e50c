#!/usr/bin/env python3
"""Compile contracts/src/*.sol with the pinned solcjs and write contracts/artifacts/<Name>.json.

The build is reproducible: fixed compiler version and settings, sources read with LF line endings,
no CBOR metadata hash in the bytecode, artifacts written as sorted JSON with no timestamps.

    python tools/compile_contracts.py           # (re)write the artifacts
    python tools/compile_contracts.py --check   # recompile in memory, fail if the committed
                                                # artifacts differ

solcjs comes from npm (`npm ci` in the repo root installs `solc` pinned in package.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SRC_DIR = REPO_ROOT / "contracts" / "src"
ARTIFACTS_DIR = REPO_ROOT / "contracts" / "artifacts"
SOLC_VERSION = "0.8.28"

# Everything that influences the bytecode. Kept in each artifact under compiler.settings.
SETTINGS: dict[str, Any] = {
    "evmVersion": "cancun",
    "metadata": {"bytecodeHash": "none"},
    "optimizer": {"enabled": True, "runs": 200},
}
OUTPUT_SELECTION = {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}}

# Runs solc-js in-process in node: stdin = standard-JSON input, stdout = {"version", "output"}.
# (The solcjs CLI prints a non-JSON notice on stdout in --standard-json mode, so it is not used.)
_NODE_DRIVER = """
const solc = require(process.argv[1]);
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const output = JSON.parse(solc.compile(input));
  process.stdout.write(JSON.stringify({version: solc.version(), output}));
});
"""


class CompileError(RuntimeError):
    """solcjs is missing, is the wrong version, or the sources do not compile."""


def solc_module_path() -> Path:
    """Path of the npm `solc` package (override with CARDPAY_SOLCJS_DIR)."""
    override = os.environ.get("CARDPAY_SOLCJS_DIR")
    path = Path(override) if override else REPO_ROOT / "node_modules" / "solc"
    if not (path / "index.js").is_file():
        raise CompileError(
            f"solcjs not found at {path}: run `npm ci` in {REPO_ROOT} "
            f"(installs solc {SOLC_VERSION} pinned in package.json)"
        )
    return path


def read_sources(src_dir: Path = SRC_DIR) -> dict[str, str]:
    """Source unit name (file name) -> content, with line endings normalised to LF."""
    files = sorted(src_dir.glob("*.sol"))
    if not files:
        raise CompileError(f"no Solidity sources in {src_dir}")
    return {f.name: f.read_bytes().decode("utf-8").replace("\r\n", "\n") for f in files}


def run_solcjs(sources: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Compile with solcjs in standard-JSON mode; returns (compiler version, output)."""
    node = shutil.which("node")
    if node is None:
        raise CompileError("node not found on PATH: install Node.js 20, then run `npm ci`")
    standard_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": {**SETTINGS, "outputSelection": OUTPUT_SELECTION},
    }
    proc = subprocess.run(
        [node, "-e", _NODE_DRIVER, str(solc_module_path())],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise CompileError(f"solcjs failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    result = json.loads(proc.stdout)
    version = str(result["version"])
    if not version.startswith(SOLC_VERSION + "+"):
        raise CompileError(
            f"solcjs is {version}, expected {SOLC_VERSION}: run `npm ci` in {REPO_ROOT}"
        )
    output: dict[str, Any] = result["output"]
    problems = output.get("errors", [])
    errors = [p for p in problems if p.get("severity") == "error"]
    if errors:
        text = "\n".join(str(p.get("formattedMessage", p.get("message"))) for p in errors)
        raise CompileError(f"compilation failed:\n{text}")
    for p in problems:
        print(str(p.get("formattedMessage", p.get("message"))).strip(), file=sys.stderr)
    return version, output


def build_artifacts(src_dir: Path = SRC_DIR) -> dict[str, str]:
    """Artifact file name -> JSON text, for every deployable contract (interfaces are skipped)."""
    sources = read_sources(src_dir)
    version, output = run_solcjs(sources)
    artifacts: dict[str, str] = {}
    for source_name in sorted(output.get("contracts", {})):
        source_sha = hashlib.sha256(sources[source_name].encode("utf-8")).hexdigest()
        for contract_name, data in sorted(output["contracts"][source_name].items()):
            bytecode = data["evm"]["bytecode"]["object"]
            if not bytecode:  # interface or abstract contract
                continue
            artifact = {
                "contractName": contract_name,
                "sourcePath": f"contracts/src/{source_name}",
                "sourceSha256": source_sha,
                "abi": data["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
                "compiler": {"version": version, "settings": SETTINGS},
            }
            file_name = f"{contract_name}.json"
            if file_name in artifacts:
                raise CompileError(f"two contracts named {contract_name}")
            artifacts[file_name] = json.dumps(artifact, indent=2, sort_keys=True) + "\n"
    return artifacts


def _diff_keys(old_text: str, new_text: str) -> list[str]:
    try:
        old = json.loads(old_text)
    except json.JSONDecodeError:
        return ["<not valid JSON>"]
    new = json.loads(new_text)
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    return changed or ["<formatting only>"]


def check(artifacts: dict[str, str], out_dir: Path) -> list[str]:
    """Differences between freshly built artifacts and the files in out_dir (empty = in sync)."""
    problems: list[str] = []
    on_disk = {p.name for p in out_dir.glob("*.json")} if out_dir.is_dir() else set()
    for name in sorted(set(artifacts) | on_disk):
        path = out_dir / name
        if name not in on_disk:
            problems.append(f"missing: {_display(path)}")
        elif name not in artifacts:
            problems.append(f"stale (no such contract in the sources): {_display(path)}")
        else:
            current = path.read_text(encoding="utf-8")
            if current != artifacts[name]:
                keys = ", ".join(_diff_keys(current, artifacts[name]))
                problems.append(f"differs: {_display(path)} (fields: {keys})")
    return problems


def _display(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def write(artifacts: dict[str, str], out_dir: Path) -> list[str]:
    """Write artifacts, remove stale ones; returns a line per change."""
    out_dir.mkdir(parents=True, exist_ok=True)
    changes: list[str] = []
    for stale in sorted(out_dir.glob("*.json")):
        if stale.name not in artifacts:
            stale.unlink()
            changes.append(f"removed {_display(stale)}")
    for name, text in sorted(artifacts.items()):
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8", newline="\n")
            changes.append(f"wrote {_display(path)}")
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="recompile in memory and exit 1 if the committed artifacts differ",
    )
    parser.add_argument("--src", type=Path, default=SRC_DIR, help="Solidity source directory")
    parser.add_argument("--out", type=Path, default=ARTIFACTS_DIR, help="artifact directory")
    args = parser.parse_args(argv)
    try:
        artifacts = build_artifacts(args.src)
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        problems = check(artifacts, args.out)
        if problems:
            print(
                f"contract artifacts are out of date ({len(problems)} problem(s)); "
                "rebuild with `python tools/compile_contracts.py`:",
                file=sys.stderr,
            )
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"ok: {len(artifacts)} artifacts in {_display(args.out)} match the sources")
        return 0
    changes = write(artifacts, args.out)
    for line in changes:
        print(line)
    print(f"{len(artifacts)} artifacts in {_display(args.out)} ({len(changes)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
