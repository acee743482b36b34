#!/usr/bin/env bash
# Proves the README's first command on a fresh machine: a clean clone of the committed tree, a new virtual
# environment that sees no package of this machine's site-packages, and the command exactly as the README writes
# it. Fails unless it writes byoc-out/plan.json with the whole AWS graph and no traceback.
#   bash scripts/readme_first_command.sh [REPO]   (REPO: the checkout to clone; default: this one)
set -euo pipefail
repo="$(cd "${1:-$(dirname "$0")/..}" && pwd)"
work="$(mktemp -d /tmp/byoc-readme.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# The README's first command: the first line of its first ```bash block.
command="$(awk '/^```bash/{inside=1; next} inside{print; exit}' "$repo/README.md")"
case "$command" in
  *"pip install"*"byoc plan"*) ;;
  *) echo "README's first command is not an install followed by byoc plan: $command" >&2; exit 1 ;;
esac

git clone -q "$repo" "$work/byoc"
python3 -m venv "$work/venv"  # no --system-site-packages: nothing from this machine leaks in
cd "$work/byoc"
echo "README's first command, in a new virtual environment from a clean clone:"
echo "  $command"
start=$(date +%s)
(
  # shellcheck disable=SC1091
  source "$work/venv/bin/activate"
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
  bash -c "$command" >"$work/out.txt" 2>&1
) || { cat "$work/out.txt"; echo "README's first command failed" >&2; exit 1; }
if grep -q "Traceback (most recent call last)" "$work/out.txt"; then
  cat "$work/out.txt"; echo "README's first command printed a traceback" >&2; exit 1
fi
"$work/venv/bin/python" - "$work/byoc/byoc-out/plan.json" <<'PY'
import json, sys

plan = json.load(open(sys.argv[1]))
types = {r["type"] for r in plan.get("resources", [])}
needed = {
    "aws:ec2/vpc:Vpc", "aws:ec2/natGateway:NatGateway", "aws:kms/key:Key", "aws:eks/cluster:Cluster",
    "aws:eks/nodeGroup:NodeGroup", "aws:s3/bucket:Bucket", "aws:cloudtrail/trail:Trail", "aws:iam/role:Role",
    "kubernetes:apps/v1:Deployment", "kubernetes:helm.sh/v3:Release",
}
missing = sorted(needed - types)
count = len(plan.get("resources", []))
if missing or count < 100:
    sys.exit(f"plan.json lacks the AWS graph: {count} resources, missing {missing}")
print(f"README's first command: plan.json with {count} resources ({len(types)} types)")
PY
echo "README's first command took $(( $(date +%s) - start )) s (install included)"
