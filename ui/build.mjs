// Builds the page into src/inferd/ui/ (or the folder given as the first argument):
// index.html as written, app.js and app.css bundled and minified by esbuild. The same sources
// and lock file give the same bytes (tests/integration/test_ui_build.py checks the committed ones).
import { copyFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const root = fileURLToPath(new URL(".", import.meta.url));
const out = process.argv[2] ?? join(root, "..", "src", "inferd", "ui");

await mkdir(out, { recursive: true });
await esbuild.build({
  absWorkingDir: root,
  entryPoints: [
    { in: "src/main.js", out: "app" },
    { in: "src/style.css", out: "app" },
  ],
  outdir: out,
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022", "chrome123", "firefox120", "safari17.5"],
  legalComments: "eof",
  charset: "utf8",
  logLevel: "warning",
});
await copyFile(join(root, "src", "index.html"), join(out, "index.html"));
