// Validate Kubernetes custom resources (KEDA, Karpenter, prometheus-operator) against their upstream CRD schemas,
// as packaged in the npm @kubernetes-models/* models (pinned in package.json next to this file).
//
//   node validate.mjs objects.json      # a JSON list of objects (or one object)
//   node validate.mjs < objects.json    # the same on stdin
//
// Prints one JSON line per object, in input order:
//   {"index": 0, "apiVersion": "...", "kind": "...", "name": "...", "result": "ok" | "invalid" | "unknown",
//    "errors": [{"path": "/spec/minReplicaCount", "message": "must be integer"}]}
// "unknown" means no schema for that apiVersion/kind here: never a pass. Exit 0 when every object is ok, 1 when
// any is invalid or unknown, 2 for unreadable input or missing npm packages.
//
// The packages' validate() checks types, enums, patterns and required fields but, like a structural schema, lets
// unknown fields through (the API server prunes them, or refuses them under strict field validation, kubectl's
// default). So fields the schema never looked at are reported too: every object is wrapped in a Proxy that
// records which keys the compiled validator reads. An object whose keys the validator read one by one has a fixed
// set of properties, and any key it never read is unknown; an object it iterated (a map such as labels or a KEDA
// trigger's metadata) or never opened (x-kubernetes-preserve-unknown-fields) takes any key.

import { readFileSync } from "node:fs";

// API group -> npm package holding its models.
const PACKAGES = {
  "keda.sh": "@kubernetes-models/keda",
  "karpenter.sh": "@kubernetes-models/karpenter",
  "karpenter.k8s.aws": "@kubernetes-models/karpenter",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};
const TOP_LEVEL = new Set(["apiVersion", "kind", "metadata", "spec", "status"]);

class MissingPackages extends Error {}

async function modelFor(apiVersion, kind) {
  const group = String(apiVersion).includes("/") ? String(apiVersion).split("/")[0] : "";
  const pkg = PACKAGES[group];
  if (!pkg) return null;
  let module;
  try {
    module = await import(`${pkg}/${apiVersion}`);
  } catch (error) {
    if (error.code === "ERR_PACKAGE_PATH_NOT_EXPORTED") return null; // a version the package does not know
    if (error.code === "ERR_MODULE_NOT_FOUND") {
      throw new MissingPackages(`${pkg} is not installed: run \`npm ci --prefix tests/crd_schemas\``);
    }
    throw error;
  }
  const model = module[kind];
  return typeof model === "function" && model.apiVersion === apiVersion && model.kind === kind ? model : null;
}

function pointer(segments) {
  return segments.map((s) => "/" + String(s).replaceAll("~", "~0").replaceAll("/", "~1")).join("");
}

// Wrap value (recursively) so that reads by the validator are recorded per object path.
function track(value, path, seen) {
  if (value === null || typeof value !== "object") return value;
  const record = { path, read: new Set(), iterated: false, isArray: Array.isArray(value), keys: Object.keys(value) };
  seen.push(record);
  const children = Array.isArray(value) ? [] : {};
  for (const key of Object.keys(value)) children[key] = track(value[key], [...path, key], seen);
  return new Proxy(children, {
    get(target, key, receiver) {
      if (typeof key === "string") record.read.add(key);
      return Reflect.get(target, key, receiver);
    },
    has(target, key) {
      if (typeof key === "string") record.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      record.iterated = true;
      return Reflect.ownKeys(target);
    },
  });
}

function unknownFields(seen) {
  const found = [];
  for (const record of seen) {
    if (record.isArray || record.iterated || record.read.size === 0) continue;
    if (record.path.length === 0) {
      for (const key of record.keys) if (!TOP_LEVEL.has(key)) found.push([...record.path, key]);
      continue;
    }
    for (const key of record.keys) if (!record.read.has(key)) found.push([...record.path, key]);
  }
  return found.map((segments) => ({ path: pointer(segments), message: "unknown field (not in the CRD schema)" }));
}

function schemaErrors(error) {
  if (!Array.isArray(error.errors)) return [{ path: "", message: String(error.message || error) }];
  return error.errors.map((e) => {
    const missing = e.keyword === "required" && e.params && e.params.missingProperty;
    const path = missing ? `${e.instancePath}/${e.params.missingProperty}` : e.instancePath;
    const allowed = e.params && e.params.allowedValues ? ` ${JSON.stringify(e.params.allowedValues)}` : "";
    return { path, message: `${e.message}${allowed}` };
  });
}

async function check(object, index) {
  const isObject = object !== null && typeof object === "object" && !Array.isArray(object);
  const apiVersion = isObject ? object.apiVersion : undefined;
  const kind = isObject ? object.kind : undefined;
  const name = isObject && object.metadata ? object.metadata.name : undefined;
  const head = { index, apiVersion, kind, name };
  const model = isObject ? await modelFor(apiVersion, kind) : null;
  if (!model) {
    return { ...head, result: "unknown", errors: [{ path: "", message: `no schema for ${apiVersion}/${kind}` }] };
  }
  const seen = [];
  const tracked = track(JSON.parse(JSON.stringify(object)), [], seen);
  let errors = [];
  try {
    // The model's own validate(), called on the tracked object (the constructor would copy it and hide the reads).
    model.prototype.validate.call(tracked);
  } catch (error) {
    errors = schemaErrors(error);
  }
  errors = errors.concat(unknownFields(seen));
  return { ...head, result: errors.length ? "invalid" : "ok", errors };
}

async function main() {
  const source = process.argv[2];
  let objects;
  try {
    objects = JSON.parse(readFileSync(source && source !== "-" ? source : 0, "utf8"));
  } catch (error) {
    process.stderr.write(`cannot read a JSON list of objects from ${source || "stdin"}: ${error.message}\n`);
    return 2;
  }
  if (!Array.isArray(objects)) objects = [objects];
  let failed = false;
  for (const [index, object] of objects.entries()) {
    const result = await check(object, index);
    failed ||= result.result !== "ok";
    process.stdout.write(JSON.stringify(result) + "\n");
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`${error instanceof MissingPackages ? error.message : error.stack}\n`);
    process.exit(2);
  },
);
