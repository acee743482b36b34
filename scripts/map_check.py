"""Map a check to the controls it evidences: one line `- <check id>` under each control, in its framework's file.

    python scripts/map_check.py elasticache_at_rest_encryption aws 'hipaa:164.312(a)(2)(iv)' soc2:CC6.1 iso27001:A.8.24

The files are compliance/catalogs/mappings/<framework>_<provider>.yaml (provider: aws, gcp or kubernetes, the
check's `cloud`). Each line is added in its sorted place, comments and the rest of the file untouched; a line that
is already there is left alone. Then the mappings are loaded as `byoc` loads them, and any MappingError is printed
(exit 1).

A check written before the mappings became data (`controls=ENCRYPT_AT_REST` or `controls=(*AUDIT, "soc2:CC7.1")` in
compliance/checks/): delete its `controls=` line, then pass the same citations here; the names of the tuples the check
modules held then are accepted as they were (FORMER_GROUPS), e.g. `... aws ENCRYPT_AT_REST IN_TRANSIT`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "compliance" / "catalogs" / "mappings"

# The citation tuples compliance/checks/{aws,gcp,kubernetes}.py held until the mappings became data (the same
# values in every module that had them), so a check written in that style converts with the names it used.
FORMER_GROUPS = {
    "ENCRYPT_AT_REST": ("hipaa:164.312(a)(2)(iv)", "soc2:CC6.1", "iso27001:A.8.24"),
    "AUDIT": ("hipaa:164.312(b)", "hipaa:164.308(a)(1)(ii)(D)", "soc2:CC7.2", "iso27001:A.8.15"),
    "IN_TRANSIT": ("hipaa:164.312(e)(1)", "hipaa:164.312(e)(2)(ii)", "soc2:CC6.7", "iso27001:A.8.24"),
    "BOUNDARY": ("hipaa:164.312(e)(1)", "soc2:CC6.6", "iso27001:A.8.20", "iso27001:A.8.22"),
    "LEAST_PRIVILEGE": ("hipaa:164.312(a)(1)", "hipaa:164.308(a)(4)(ii)(B)", "soc2:CC6.3", "iso27001:A.5.15"),
    "HARDENING": ("soc2:CC6.8", "iso27001:A.8.9"),
    "IMDS": ("hipaa:164.312(a)(1)", "soc2:CC6.1", "iso27001:A.8.9"),
    "RECOVERY": ("hipaa:164.312(c)(1)", "soc2:A1.2", "iso27001:A.8.13"),
    "CONFIDENTIAL": ("soc2:C1.1", "iso27001:A.8.11", "iso27001:A.8.12"),
}
ITEM = re.compile(r"^      - (\S+)")


def refs_of(citations: list[str]) -> list[str]:
    """`hipaa:164.312(b)` refs, with former tuple names expanded; raises ValueError for anything else."""
    refs: list[str] = []
    for citation in citations:
        if citation in FORMER_GROUPS:
            refs += FORMER_GROUPS[citation]
        elif re.fullmatch(r"[a-z0-9]+:\S+", citation):
            refs.append(citation)
        else:
            raise ValueError(
                f"citation {citation!r}: write framework:control (soc2:CC6.1) or one of {', '.join(FORMER_GROUPS)}"
            )
    return list(dict.fromkeys(refs))


def add_line(text: str, control_id: str, check_id: str) -> str:
    """The file's text with `- check_id` in the sorted list of `control_id`'s checks (the control added if absent)."""
    lines = text.splitlines()
    head = next(
        (i for i, line in enumerate(lines) if re.fullmatch(rf"  - id: {re.escape(control_id)}(\s+#.*)?", line)), None
    )
    if head is None:
        lines += [f"  - id: {control_id}", "    checks:", f"      - {check_id}"]
        return "\n".join(lines) + "\n"
    if lines[head + 1].strip() == "checks: []":
        lines[head + 1 : head + 2] = ["    checks:", f"      - {check_id}"]
        return "\n".join(lines) + "\n"
    end = head + 2
    while end < len(lines) and ITEM.match(lines[end]):
        end += 1
    listed = [match.group(1) for line in lines[head + 2 : end] if (match := ITEM.match(line))]
    if check_id in listed:
        return text
    at = head + 2 + sum(existing < check_id for existing in listed)
    lines.insert(at, f"      - {check_id}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", help="the check id (its `id=`)")
    parser.add_argument("provider", choices=["aws", "gcp", "kubernetes"], help="the check's `cloud`")
    parser.add_argument("citations", nargs="+", help="framework:control refs, or former tuple names")
    parser.add_argument("--folder", type=Path, default=MAPPINGS, help="the mapping files (default: byoc's own)")
    args = parser.parse_args(argv)
    try:
        refs = refs_of(args.citations)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    for ref in refs:
        framework, _, control_id = ref.partition(":")
        path = args.folder / f"{framework}_{args.provider}.yaml"
        if not path.is_file():
            print(f"{ref}: no mapping file {path} (framework {framework!r}?)", file=sys.stderr)
            return 2
        before = path.read_text()
        after = add_line(before, control_id, args.check)
        path.write_text(after)
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{shown}: {control_id} <- {args.check}" + (" (already there)" if after == before else ""))
    sys.path.insert(0, str(ROOT))
    try:
        from compliance.checks import all_checks
        from compliance.model import load_mappings

        load_mappings(all_checks(), args.folder)
    except Exception as exc:  # what byoc itself would stop on: say it now, the lines are written
        print(f"written, but the mappings do not load yet: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
