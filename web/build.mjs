// Bundle the browser code ESI-KG takes from npm into kgservice/static/vendor/ (run by hatch_build.py),
// with the licence texts of every package that went into the bundle beside it.
import { buildSync } from "esbuild";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

const outfile = "kgservice/static/vendor/editor.js";
const result = buildSync({
  entryPoints: ["web/editor.js"],
  bundle: true,
  minify: true,
  format: "iife",
  target: "es2020",
  metafile: true,
  outfile,
});

const packages = new Set();
for (const input of Object.keys(result.metafile.inputs)) {
  const match = input.match(/^node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (match) packages.add(match[1]);
}
const notices = [...packages].sort().map((name) => {
  const dir = join("node_modules", name);
  const { version, license } = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  const file = ["LICENSE", "LICENSE.md", "LICENSE.txt"].map((f) => join(dir, f)).find(existsSync);
  return `${name} ${version} (${license})\n\n${file ? readFileSync(file, "utf8").trim() : ""}\n`;
});
writeFileSync(join(dirname(outfile), "editor.js.LICENSES.txt"), notices.join("\n" + "-".repeat(72) + "\n\n"));
