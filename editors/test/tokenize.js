// Tokenize files with the real VS Code TextMate engine (vscode-textmate + vscode-oniguruma):
//   NODE_PATH=/path/to/node_modules node editors/test/tokenize.js GRAMMAR FILE... > tokens.json
// Prints {file: [[line, startIndex, endIndex, [scopes...]], ...]} (indices in UTF-16 units, lines
// 0-based). tests/test_editor_grammar.py runs it when FTDSL_TEXTMATE_NODE_MODULES names a
// node_modules folder holding both packages (npm install vscode-textmate vscode-oniguruma).
"use strict";
const fs = require("fs");
const path = require("path");
const vsctm = require("vscode-textmate");
const oniguruma = require("vscode-oniguruma");

const wasm = fs.readFileSync(path.join(path.dirname(require.resolve("vscode-oniguruma")), "onig.wasm"));

async function main() {
  const [grammarPath, ...files] = process.argv.slice(2);
  await oniguruma.loadWASM(wasm.buffer.slice(wasm.byteOffset, wasm.byteOffset + wasm.byteLength));
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (p) => new oniguruma.OnigScanner(p),
      createOnigString: (s) => new oniguruma.OnigString(s),
    }),
    loadGrammar: async () => vsctm.parseRawGrammar(fs.readFileSync(grammarPath, "utf8"), grammarPath),
  });
  const grammar = await registry.loadGrammar("source.ftp");
  const out = {};
  for (const file of files) {
    let state = vsctm.INITIAL;
    const rows = [];
    fs.readFileSync(file, "utf8").split("\n").forEach((line, i) => {
      const r = grammar.tokenizeLine(line, state);
      for (const t of r.tokens) rows.push([i, t.startIndex, t.endIndex, t.scopes]);
      state = r.ruleStack;
    });
    out[file] = rows;
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
