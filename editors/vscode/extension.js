// The ftdsl extension: the grammar and language configuration are declared in package.json;
// this file starts `ftdsl lsp` (setting `ftdsl.server.command`) with vscode-languageclient.
// Plain JavaScript: no build step.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration("ftdsl").get("server.command", ["ftdsl", "lsp"]);
  const serverOptions = {
    command: command[0],
    args: command.slice(1),
    transport: TransportKind.stdio,
  };
  const clientOptions = {
    documentSelector: [{ scheme: "file", language: "ftp" }, { scheme: "untitled", language: "ftp" }],
  };
  client = new LanguageClient("ftdsl", "ftdsl language server", serverOptions, clientOptions);
  client.start().catch((err) => {
    vscode.window.showErrorMessage(
      `ftdsl: could not start \`${command.join(" ")}\` (${err.message}). ` +
        'Install it with pip install "ftdsl[lsp]" or set "ftdsl.server.command".'
    );
  });
  context.subscriptions.push({ dispose: () => client && client.stop() });
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
