// The size budget: the ESM build of the SDK, bundled and minified as an
// application's bundler would, stays under 20 KB gzipped without
// MessagePack, which is only loaded (a separate module) when chosen.

import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { test } from 'node:test';

import { type Plugin, build } from 'esbuild';

const BUDGET_BYTES = 20 * 1024;
const dist = (file: string) => fileURLToPath(new URL(`../../../dist/${file}`, import.meta.url));

/** `file` of dist bundled and minified; `./msgpack.js` left out, as the dynamic import it is loaded by. */
async function bundled(file: string, withMsgpack: boolean): Promise<{ text: string; gzipped: number }> {
  const leaveOut: Plugin = {
    name: 'leave-out-msgpack',
    setup(builder) {
      builder.onResolve({ filter: /msgpack/ }, (args) => (withMsgpack ? undefined : { path: args.path, external: true }));
    },
  };
  const result = await build({
    entryPoints: [dist(file)],
    bundle: true,
    minify: true,
    format: 'esm',
    target: 'es2017',
    write: false,
    plugins: [leaveOut],
    logLevel: 'silent',
  });
  const text = result.outputFiles[0]?.text ?? '';
  return { text, gzipped: gzipSync(text, { level: 9 }).length };
}

test(`the ESM build is under ${BUDGET_BYTES / 1024} KB minified and gzipped, without MessagePack`, async () => {
  const sdk = await bundled('index.js', false);
  const msgpack = await bundled('msgpack.js', true);
  console.log(
    `size: index.js ${sdk.text.length} bytes minified, ${sdk.gzipped} gzipped; ` +
      `msgpack.js with @msgpack/msgpack ${msgpack.gzipped} gzipped, loaded only when chosen`,
  );
  assert.ok(sdk.gzipped < BUDGET_BYTES, `${sdk.gzipped} bytes gzipped`);
  // A message of @msgpack/msgpack that minifying keeps: in its bundle, not in the SDK's.
  const marker = 'Unrecognized data size for timestamp';
  assert.ok(msgpack.text.includes(marker));
  assert.ok(!sdk.text.includes(marker), 'no MessagePack code in the main bundle');
  assert.ok(sdk.text.includes('import("./msgpack.js")'), 'MessagePack stays a dynamic import');
});
