// Runs one Python script in MicroPython's WebAssembly port (npm @micropython/micropython-webassembly-pyscript).
//
//   node micropython_runner.mjs MICROPYTHON_MJS [SOURCE]... < script.py
//
// Each SOURCE (a folder or a .py file) is copied into MicroPython's own file system under /lib,
// where `import` looks, as mpremote or mip would put it on a board: a folder `node/` becomes the
// package `node`. The script's output goes to stdout; an exception it raises (SystemExit too)
// goes to stderr as MicroPython's traceback and the exit status is 1. Any other failure of this
// runner exits with 2 and one line on stderr.
//
// The port has no AES (no `cryptolib`): the module `_host_aes` gives MicroPython AES-ECB from
// Node.js's OpenSSL, for the stand-in `cryptolib` in tests/micropython_stand_ins/ (copied in only
// when a test asks for it). Bytes cross as hex text: the port hands bytes to JavaScript as proxies.

import { createCipheriv, createDecipheriv } from "node:crypto";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { pathToFileURL } from "node:url";

const LIB = "/lib";

function fail(message) {
  process.stderr.write(`micropython_runner: ${message}\n`);
  process.exit(2);
}

function aesEcb(decrypt, keyHex, dataHex) {
  const key = Buffer.from(keyHex, "hex");
  const algorithm = `aes-${key.length * 8}-ecb`;
  const cipher = decrypt ? createDecipheriv(algorithm, key, null) : createCipheriv(algorithm, key, null);
  cipher.setAutoPadding(false);
  return Buffer.concat([cipher.update(Buffer.from(dataHex, "hex")), cipher.final()]).toString("hex");
}

function copyInto(FS, source, target) {
  if (statSync(source).isDirectory()) {
    FS.mkdir(target);
    for (const name of readdirSync(source).sort()) {
      if (name === "__pycache__") continue;
      const path = join(source, name);
      if (statSync(path).isDirectory() || name.endsWith(".py")) copyInto(FS, path, `${target}/${name}`);
    }
  } else {
    FS.writeFile(target, readFileSync(source));
  }
}

const [moduleFile, ...sources] = process.argv.slice(2);
if (!moduleFile) fail("usage: micropython_runner.mjs MICROPYTHON_MJS [SOURCE]... < script.py");

let loadMicroPython;
try {
  ({ loadMicroPython } = await import(pathToFileURL(moduleFile).href));
} catch (error) {
  fail(`cannot load ${moduleFile}: ${error.message.split("\n")[0]}`);
}

const script = readFileSync(0, "utf8");
// The port hands output over byte by byte: gathered, then written once.
const output = [];
// This build grows its heap as needed (gc.mem_free() says some 130 MB): no board's limit holds
// here, so a test that cares measures gc.mem_alloc() instead.
const mp = await loadMicroPython({
  linebuffer: false,
  stdout: (bytes) => output.push(bytes[0]),
  stderr: (bytes) => output.push(bytes[0]),
});

mp.registerJsModule("_host_aes", {
  ecb_encrypt: (keyHex, dataHex) => aesEcb(false, keyHex, dataHex),
  ecb_decrypt: (keyHex, dataHex) => aesEcb(true, keyHex, dataHex),
});

try {
  mp.FS.mkdir(LIB);
  for (const source of sources) copyInto(mp.FS, source, `${LIB}/${basename(source)}`);
} catch (error) {
  fail(`cannot copy the sources into MicroPython's file system: ${error.message || error}`);
}

try {
  mp.runPython(script);
  process.stdout.write(Buffer.from(output));
} catch (error) {
  process.stdout.write(Buffer.from(output));
  if (error.name === "PythonError") {
    process.stderr.write(error.message);
    process.exitCode = 1;
  } else {
    process.stderr.write(`micropython_runner: MicroPython failed: ${String(error.message).split("\n")[0]}\n`);
    process.exitCode = 2;
  }
}
