// Uploads: the slot request (type, size, SHA-256), the PUT with exactly the given headers.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';

import { ChatError } from '../src/index.js';
import { sha256 } from '../src/sha256.js';
import { hex } from '../src/wire.js';
import { connected, fakeNet, json, waitFor, type FakeSocket } from './fakes.js';

const PUT_URL = 'http://10.0.0.11:7700/media/m019aa1b27c3d7e008000000000000001?exp=1795000300123&sig=abc';
const HEADERS = [
  { name: 'content-type', value: 'image/jpeg' },
  { name: 'x-amz-checksum-sha256', value: 'n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=' },
  { name: 'if-none-match', value: '*' },
];

/** Answers the client's upload slot request like the node. */
async function answerSlot(ws: FakeSocket): Promise<Record<string, unknown>> {
  await waitFor(() => ws.of('media').length === 1, 'the upload slot request');
  const req = ws.of('media')[0]!;
  ws.reply({
    media: {
      requestId: req.requestId,
      mediaId: 'm019aa1b27c3d7e008000000000000001',
      method: 'PUT',
      url: PUT_URL,
      headers: HEADERS,
      expiresMs: '1795000300123',
    },
  });
  return req;
}

test('uploadFile: slot with size and SHA-256, then PUT of the bytes with exactly the given headers', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  net.handler = () => new Response(null, { status: 200 });
  const bytes = Uint8Array.from({ length: 100_000 }, (_, i) => (i * 31 + 7) & 255);
  const thumb = Uint8Array.from([1, 2, 3]);
  const up = c.uploadFile(new Blob([bytes]), 'image/JPEG; q=1', { name: 'beach.jpg', thumbnail: thumb });
  const req = await answerSlot(ws);
  const sha = createHash('sha256').update(bytes).digest('hex');
  assert.deepEqual(req, { requestId: req.requestId, upload: { mime: 'image/JPEG; q=1', size: '100000', sha256: sha } });
  const att = await up;
  assert.deepEqual(att, {
    mediaId: 'm019aa1b27c3d7e008000000000000001',
    mime: 'image/jpeg',
    size: 100000,
    sha256: sha,
    name: 'beach.jpg',
    thumbnail: thumb,
  });
  const put = net.fetches.find((f) => f.method === 'PUT')!;
  assert.equal(put.url, PUT_URL);
  assert.deepEqual(
    put.headers.sort(),
    HEADERS.map((h) => [h.name, h.value]).sort(),
    'exactly the returned headers, nothing added',
  );
  assert.deepEqual(put.body, bytes);
});

test('uploadFile: a refused PUT is a ChatError HTTP with the status and the body code', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  net.handler = () => json(403, { code: 'URL_EXPIRED', message: 'the URL has expired' });
  const up = c.uploadFile(Uint8Array.from([1, 2, 3]), 'text/plain');
  await answerSlot(ws);
  await assert.rejects(up, (e: ChatError) => {
    assert.ok(e instanceof ChatError);
    assert.equal(e.code, 'HTTP');
    assert.equal(e.status, 403);
    assert.equal(e.serverCode, 'URL_EXPIRED');
    assert.match(e.message, /403 URL_EXPIRED/);
    return true;
  });
});

test('uploadFile: a refused slot rejects with the node code, nothing is PUT', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const up = c.uploadFile(Uint8Array.from([1]), 'application/x-nope');
  await waitFor(() => ws.of('media').length === 1, 'the slot request');
  ws.reply({ error: { code: 'ERROR_CODE_MEDIA_TYPE', message: 'not allowed', ref: ws.of('media')[0]!.requestId } });
  await assert.rejects(up, (e: ChatError) => e.code === 'MEDIA_TYPE');
  assert.equal(net.fetches.filter((f) => f.method === 'PUT').length, 0);
});

test('downloadUrl: a media download request, the URL of the answer', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const u = c.downloadUrl('m1', 0);
  const req = ws.of('media')[0]!;
  assert.deepEqual(req, { requestId: req.requestId, download: { mediaId: 'm1' } });
  ws.reply({ media: { requestId: req.requestId, mediaId: 'm1', method: 'GET', url: 'http://n/media/m1?sig=x' } });
  assert.equal(await u, 'http://n/media/m1?sig=x');
});

test('the JS SHA-256 (for pages without WebCrypto) agrees with node:crypto', () => {
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 65537]) {
    const data = Uint8Array.from({ length: n }, (_, i) => (i * 131 + n) & 255);
    assert.equal(hex(sha256(data)), createHash('sha256').update(data).digest('hex'), `length ${n}`);
  }
});
