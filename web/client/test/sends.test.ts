// Sends, deliveries, acks, reads, typing, activity.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ChatError } from '../src/index.js';
import type { Events } from '../src/index.js';
import { client, connected, fakeNet, reconnect, sleep, waitFor, welcome } from './fakes.js';

test('send: queued until welcome, resolved and reported at ✓', async (t) => {
  const net = fakeNet();
  const c = client(net);
  t.after(() => c.close());
  const p = c.send({ to: 'bob', body: 'hi' });
  assert.match(p.clientMsgId, /^[A-Za-z0-9\-_.:@+=/]{1,64}$/);
  const sentEvents: Events['sent'][] = [];
  c.on('sent', (s) => sentEvents.push(s));
  void c.connect();
  const ws = await net.socket(0);
  ws.accept();
  assert.equal(ws.of('send').length, 0, 'nothing but hello before welcome');
  ws.reply(welcome());
  assert.deepEqual(ws.of('send'), [{ clientMsgId: p.clientMsgId, to: 'bob', body: 'hi' }]);
  ws.reply({ sent: { clientMsgId: p.clientMsgId, msgId: 'm1', ts: '1795000000123' } });
  assert.deepEqual(await p.sent, { clientMsgId: p.clientMsgId, msgId: 'm1', ts: 1795000000123 });
  assert.deepEqual(sentEvents, [{ clientMsgId: p.clientMsgId, msgId: 'm1', ts: 1795000000123 }]);
});

test('send: group messages and attachments on the wire', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  c.send({ group: 'g-1', body: 'all', clientMsgId: 'c1' });
  c.send({ to: 'bob', attachment: { mediaId: 'm1', size: 3, thumbnail: Uint8Array.from([1, 2, 3]), name: 'a.png' }, clientMsgId: 'c2' });
  assert.deepEqual(ws.of('send'), [
    { clientMsgId: 'c1', group: 'g-1', body: 'all' },
    { clientMsgId: 'c2', to: 'bob', attachment: { mediaId: 'm1', size: '3', thumbnail: 'AQID', name: 'a.png' } },
  ]);
});

test('send: an invalid clientMsgId is refused at once; a repeated one gives the same promise', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  await assert.rejects(c.send({ to: 'bob', body: 'x', clientMsgId: 'has space' }).sent, (e: ChatError) => e.code === 'INVALID_ID');
  await assert.rejects(c.send({ to: 'bob', body: 'x', clientMsgId: 'x'.repeat(65) }).sent, (e: ChatError) => e.code === 'INVALID_ID');
  const a = c.send({ to: 'bob', body: 'x', clientMsgId: 'same' });
  const b = c.send({ to: 'bob', body: 'x', clientMsgId: 'same' });
  assert.equal(a.sent, b.sent);
  assert.equal(ws.of('send').length, 1);
});

test('a retryable refusal is sent again after retryAfterMs, a definitive one rejects', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const errors: ChatError[] = [];
  c.on('error', (e) => errors.push(e));
  const r = c.send({ to: 'bob', body: 'later', clientMsgId: 'r1' });
  const d = c.send({ to: 'bob', body: 'x'.repeat(10), clientMsgId: 'd1' });
  ws.reply({ error: { code: 'ERROR_CODE_BODY_TOO_LARGE', message: 'too large', ref: 'd1' } });
  await assert.rejects(d.sent, (e: ChatError) => e instanceof ChatError && e.code === 'BODY_TOO_LARGE' && e.ref === 'd1');
  const t0 = performance.now();
  ws.reply({ error: { code: 'ERROR_CODE_RATE_LIMITED', message: 'slow down', ref: 'r1', retryAfterMs: 60 } });
  await waitFor(() => ws.of('send').filter((s) => s.clientMsgId === 'r1').length === 2, 'the second attempt');
  assert.ok(performance.now() - t0 >= 55, `re-sent after ${performance.now() - t0} ms`);
  ws.reply({ error: { code: 'ERROR_CODE_STORAGE_FULL', message: 'full', ref: 'r1', retryAfterMs: 5 } });
  await waitFor(() => ws.of('send').filter((s) => s.clientMsgId === 'r1').length === 3, 'the third attempt');
  ws.reply({ sent: { clientMsgId: 'r1', msgId: 'm', ts: '1' } });
  assert.equal((await r.sent).msgId, 'm');
  assert.equal(ws.of('send').filter((s) => s.clientMsgId === 'd1').length, 1, 'a refused message is not sent again');
  assert.deepEqual(errors, [], 'answers to sends are not reported as errors');
});

test('refused sends of one conversation are sent again in send order', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  c.send({ group: 'g1', body: 'a', clientMsgId: 'a1' });
  c.send({ group: 'g1', body: 'b', clientMsgId: 'b1' });
  c.send({ to: 'carol', body: 'c', clientMsgId: 'c1' });
  ws.reply({ error: { code: 'ERROR_CODE_UNAVAILABLE', message: 'later', ref: 'a1', retryAfterMs: 150 } });
  ws.reply({ error: { code: 'ERROR_CODE_UNAVAILABLE', message: 'later', ref: 'b1', retryAfterMs: 10 } });
  ws.reply({ error: { code: 'ERROR_CODE_UNAVAILABLE', message: 'later', ref: 'c1', retryAfterMs: 10 } });
  // c1, in another conversation, goes after its own wait; b1 waits for a1 and follows it.
  await waitFor(() => ws.of('send').length === 4, 'c1 again');
  assert.deepEqual(ws.of('send').map((s) => s.clientMsgId), ['a1', 'b1', 'c1', 'c1']);
  await waitFor(() => ws.of('send').length === 6, 'a1 and b1 again');
  assert.deepEqual(ws.of('send').slice(4).map((s) => s.clientMsgId), ['a1', 'b1']);
});

test('a retry pending at a drop is sent on the next connection instead', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  c.send({ to: 'bob', body: 'x', clientMsgId: 'r1' });
  ws.reply({ error: { code: 'ERROR_CODE_OVERLOADED', message: 'busy', ref: 'r1', retryAfterMs: 100 } });
  ws.drop();
  const ws2 = await reconnect(net, c);
  assert.equal(ws2.of('send').length, 1);
  await sleep(150);
  assert.equal(ws2.of('send').length, 1, 'the old retry timer is gone');
  assert.equal(ws.of('send').length, 1);
});

test('deliveries: events by kind, cumulative ack batched once for a burst', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const got: string[] = [];
  c.on('message', ({ seq, message }) => got.push(`message ${seq} ${message.from}`));
  c.on('receipt', ({ seq, receipt }) => got.push(`receipt ${seq} ${receipt.kind}`));
  c.on('groupEvent', ({ seq, event }) => got.push(`group ${seq} ${event.kind}`));
  c.on('failed', ({ seq, failed }) => got.push(`failed ${seq} ${failed.to}`));
  ws.reply({ deliver: { seq: '1', message: { msgId: 'a', from: 'bob', to: 'alice', body: 'x' } } });
  ws.reply({ deliver: { seq: '2', receipt: { kind: 'RECEIPT_KIND_READ', by: 'bob', msgIds: ['z'] } } });
  ws.reply({ deliver: { seq: '3', groupEvent: { group: 'g', kind: 'GROUP_EVENT_KIND_CREATED', users: ['bob'] } } });
  ws.reply({ deliver: { seq: '4', failed: { msgId: 'q', to: 'carol' } } });
  ws.reply({ deliver: { seq: '5', somethingNew: {} } });
  assert.deepEqual(got, ['message 1 bob', 'receipt 2 read', 'group 3 created', 'failed 4 carol']);
  assert.equal(c.lastSeq, 5);
  await waitFor(() => ws.of('ack').length > 0, 'an ack');
  await sleep(60);
  assert.deepEqual(ws.of('ack'), [{ upToSeq: '5' }]);
  ws.reply({ deliver: { seq: '6', message: { msgId: 'b', from: 'bob', to: 'alice', body: 'y' } } });
  await waitFor(() => ws.of('ack').length === 2, 'the next ack');
  assert.deepEqual(ws.of('ack')[1], { upToSeq: '6' });
});

test('autoAck: false sends no acks', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net, { autoAck: false });
  t.after(() => c.close());
  ws.reply({ deliver: { seq: '1', message: { msgId: 'a', from: 'bob', to: 'alice', body: 'x' } } });
  assert.equal(c.lastSeq, 1);
  await sleep(60);
  assert.equal(ws.of('ack').length, 0);
});

test('read marker: sent now, kept and re-sent after a reconnection when the node lacks it', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  c.read(5);
  c.read(4); // not above the marker: nothing
  assert.deepEqual(ws.of('read'), [{ upToSeq: '5' }]);
  ws.drop();
  c.read(7);
  // The node knows 5 (welcome.readSeq): 7 is sent.
  const ws2 = await reconnect(net, c, { readSeq: '5' });
  assert.deepEqual(ws2.of('read'), [{ upToSeq: '7' }]);
  ws2.drop();
  // The node knows 7 already: nothing to send.
  const ws3 = await reconnect(net, c, { readSeq: '7' });
  assert.deepEqual(ws3.of('read'), []);
  ws3.drop();
  // The read of 7 was lost with a node: sent again.
  const ws4 = await reconnect(net, c, { readSeq: '5' });
  assert.deepEqual(ws4.of('read'), [{ upToSeq: '7' }]);
});

test('typing: TYPING / STOPPED, to a user or a group; dropped when not connected', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const notices: Events['typing'][] = [];
  c.on('typing', (n) => notices.push(n));
  c.typing({ to: 'bob' }, true);
  c.typing({ group: 'g-1' }, false);
  assert.deepEqual(ws.of('typing'), [
    { to: 'bob', state: 'TYPING_STATE_TYPING' },
    { group: 'g-1', state: 'TYPING_STATE_STOPPED' },
  ]);
  ws.reply({ typing: { from: 'bob', fromDevice: 'phone', state: 'TYPING_STATE_TYPING', expiresInMs: 6000 } });
  assert.deepEqual(notices, [{ from: 'bob', fromDevice: 'phone', typing: true, expiresInMs: 6000 }]);
  ws.drop();
  c.typing({ to: 'bob' }, true);
  const ws2 = await reconnect(net, c);
  assert.deepEqual(ws2.of('typing'), []);
});

test('markActive: the next frame carries active, else a ping does; at most once per 5 s', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  c.markActive();
  c.send({ to: 'bob', body: 'x', clientMsgId: 's1' });
  await sleep(5);
  assert.deepEqual(ws.frames().slice(1), [{ send: { clientMsgId: 's1', to: 'bob', body: 'x' }, active: true }]);
  c.markActive(); // within 5 s of the send: nothing
  await sleep(5);
  assert.equal(ws.frames().length, 2);
  ws.drop();
  const ws2 = await reconnect(net, c);
  // After a send, reads and typing count as activity too: still throttled on the new connection.
  c.markActive();
  await sleep(5);
  assert.equal(ws2.frames().filter((f) => 'ping' in f).length, 0);
});

test('markActive on a quiet connection sends a ping with active', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  c.markActive();
  await waitFor(() => ws.of('ping').length === 1, 'the ping');
  const ping = ws.frames().find((f) => 'ping' in f)!;
  assert.equal(ping.active, true);
  ws.reply({ pong: { nonce: '1', serverTimeMs: '5' } });
  c.markActive();
  await sleep(10);
  assert.equal(ws.of('ping').length, 1, 'throttled');
});

test('readState and presenceUpdate are reported; errors without a pending ref too', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const got: unknown[] = [];
  c.on('readState', (r) => got.push(r));
  c.on('presence', (p) => got.push(p));
  c.on('error', (e) => got.push(`${e.code} ${e.ref ?? '-'}`));
  ws.reply({ readState: { upToSeq: '42', device: 'phone' } });
  ws.reply({ presenceUpdate: { status: { user: 'bob', online: true, lastSeenMs: '7' } } });
  ws.reply({ error: { code: 'ERROR_CODE_BAD_FRAME', message: 'oops' } });
  ws.reply({ error: { code: 'ERROR_CODE_INVALID_ID', message: 'no', ref: 'unknown-ref' } });
  ws.reply('not json');
  assert.deepEqual(got, [
    { upToSeq: 42, device: 'phone' },
    { user: 'bob', online: true, lastSeenMs: 7 },
    'BAD_FRAME -',
    'INVALID_ID unknown-ref',
    'PROTOCOL -',
  ]);
  assert.equal(c.state, 'open');
});

test('a listener that throws does not break the client', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const original = console.error;
  console.error = () => undefined;
  t.after(() => {
    console.error = original;
  });
  const seen: number[] = [];
  c.on('message', () => {
    throw new Error('listener bug');
  });
  const off = c.on('message', ({ seq }) => seen.push(seq));
  ws.reply({ deliver: { seq: '1', message: { msgId: 'a', from: 'bob' } } });
  off();
  ws.reply({ deliver: { seq: '2', message: { msgId: 'b', from: 'bob' } } });
  assert.deepEqual(seen, [1]);
  assert.equal(c.lastSeq, 2);
});
