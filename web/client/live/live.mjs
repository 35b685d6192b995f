// The TypeScript client against a real cluster, in Node (run by tests/tests/ts_client.rs with
// `node --experimental-websocket`; Node 22 has WebSocket without the flag). Exits 0 when every
// check passed, else prints what failed and exits 1.
//
// Env: CHAT_ROUTER (http://host:port), CHAT_WRONG_NODE (ws:// URL of a node that is not bob's
// home), CHAT_ALICE_TOKEN, CHAT_BOB_TOKEN, CHAT_CAROL_TOKEN, CHAT_BOB_HOME (node id).

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { ChatClient } from '../dist/index.js';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const DEADLINE_MS = 30_000;

/// Resolves when `pred()` holds, polling; rejects after the deadline with `what`.
async function until(what, pred) {
  const end = Date.now() + DEADLINE_MS;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const router = env('CHAT_ROUTER');
const alice = new ChatClient({ router, token: env('CHAT_ALICE_TOKEN'), agent: 'live-test' });
// Bob starts at a node that is not his home: its `redirect` frame must be followed.
const bob = new ChatClient({ url: env('CHAT_WRONG_NODE'), token: env('CHAT_BOB_TOKEN'), agent: 'live-test' });
const carol = new ChatClient({ router, token: env('CHAT_CAROL_TOKEN'), agent: 'live-test' });

const got = { bob: [], carol: [], receipts: new Map(), redirects: 0 };
bob.on('redirect', () => got.redirects++);
bob.on('message', ({ message }) => got.bob.push(message));
carol.on('message', ({ message }) => got.carol.push(message));
alice.on('receipt', ({ receipt }) => {
  for (const id of receipt.msgIds) got.receipts.set(id, receipt.kind);
});

try {
  const [wa, wb] = await Promise.all([alice.connect(), bob.connect(), carol.connect()]);
  assert.equal(wb.node, env('CHAT_BOB_HOME'), 'bob ends at his home node');
  assert.ok(got.redirects >= 1, 'bob was redirected');
  assert.equal(wa.user, alice.user);

  // 1:1: every message once, in order, each with its ✓ and then its delivered receipt.
  const sends = Array.from({ length: 20 }, (_, i) => alice.send({ to: bob.user, body: `m${i}` }));
  const sent = await Promise.all(sends.map((s) => s.sent));
  await until('bob to get 20 messages', () => got.bob.length >= 20);
  assert.deepEqual(got.bob.map((m) => m.body), sends.map((_, i) => `m${i}`));
  assert.deepEqual(got.bob.map((m) => m.msgId), sent.map((s) => s.msgId));
  await until('delivered receipts for all 20', () => sent.every((s) => got.receipts.has(s.msgId)));
  bob.read(bob.lastSeq);
  await until('read receipts for all 20', () => sent.every((s) => got.receipts.get(s.msgId) === 'read'));

  // A retry with the same clientMsgId is the same message (idempotent send).
  const again = await alice.send({ to: bob.user, body: 'm0', clientMsgId: sends[0].clientMsgId }).sent;
  assert.equal(again.msgId, sent[0].msgId);

  // A group of three across nodes.
  const g = await alice.createGroup('live', [bob.user, carol.user]);
  assert.equal(g.members.length, 3);
  await alice.send({ group: g.group, body: 'hello group' }).sent;
  await until('the group message at bob and carol', () =>
    [got.bob, got.carol].every((l) => l.some((m) => m.group === g.group && m.body === 'hello group')));
  const mine = await carol.myGroups();
  assert.ok(mine.some((x) => x.group === g.group && x.name === 'live'));

  // A file: uploaded to the signed URL, attached, fetched back by the recipient byte for byte.
  const bytes = new Uint8Array(5000).map((_, i) => (i * 7) % 256);
  const att = await alice.uploadFile(bytes, 'image/png', { name: 'x.png' });
  assert.equal(att.sha256, createHash('sha256').update(bytes).digest('hex'));
  await alice.send({ to: bob.user, body: 'a file', attachment: att }).sent;
  await until('the file message at bob', () => got.bob.some((m) => m.attachment?.mediaId === att.mediaId));
  const seq = bob.lastSeq;
  const url = await bob.downloadUrl(att.mediaId, seq);
  const back = new Uint8Array(await (await fetch(url)).arrayBuffer());
  assert.deepEqual(back, bytes);

  // Presence: alice watches bob; he is shown online once active (his sends made him so).
  let bobOnline = false;
  alice.on('presence', (p) => {
    if (p.user === bob.user) bobOnline = p.online;
  });
  await bob.send({ to: alice.user, body: 'here' }).sent;
  const now = await alice.presenceWatch([bob.user]);
  assert.equal(now[0].user, bob.user);
  await until('bob shown online', () => bobOnline);

  // Errors come back typed: a group that does not exist.
  await assert.rejects(alice.groupInfo('g-00000000-0000-7000-8000-000000000000'), (e) => e.code === 'UNKNOWN_GROUP');

  console.log('live: all checks passed');
  for (const c of [alice, bob, carol]) c.close();
  process.exit(0);
} catch (e) {
  console.error('live: FAILED:', e?.stack ?? e);
  process.exit(1);
}
