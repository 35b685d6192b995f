// Connecting, redirects, reconnecting and resuming, tokens, close().

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ChatError } from '../src/index.js';
import type { ConnState } from '../src/index.js';
import { client, connected, fakeNet, json, jwt, opening, reconnect, sleep, waitFor, welcome } from './fakes.js';

test('looks the home up at the router, says hello with token and agent, resolves at welcome', async (t) => {
  const net = fakeNet();
  const token = jwt('a/b');
  const c = client(net, { token, resumeAfter: 12 });
  t.after(() => c.close());
  assert.equal(c.user, 'a/b');
  assert.equal(c.state, 'idle');
  const states: ConnState[] = [];
  c.on('state', (s) => states.push(s));
  let welcomes = 0;
  c.on('welcome', () => welcomes++);
  const p = c.connect();
  const ws = await net.socket(0);
  assert.equal(net.fetches.length, 1);
  assert.equal(net.fetches[0]!.url, 'http://router/v1/route/a%2Fb');
  assert.equal(ws.url, 'ws://node-1');
  ws.accept();
  assert.deepEqual(ws.frames(), [{ hello: { token, agent: 'test/1', resumeAfter: '12' } }]);
  ws.reply(welcome({ cursor: '10', inboxSeq: '20' }));
  const w = await p;
  assert.equal(w.inboxSeq, 20);
  assert.equal(c.welcome, w);
  assert.equal(c.state, 'open');
  assert.deepEqual(states, ['connecting', 'open']);
  assert.equal(welcomes, 1);
  // resumeAfter (12) is above the cursor (10): the client re-asserts its ack.
  await waitFor(() => ws.of('ack').length === 1, 'the ack');
  assert.deepEqual(ws.of('ack'), [{ upToSeq: '12' }]);
});

test('a node URL is used directly, without the router', async (t) => {
  const net = fakeNet();
  const c = client(net, { router: undefined, url: 'wss://n7.example/ws' });
  t.after(() => c.close());
  void c.connect();
  const ws = await net.socket(0);
  assert.equal(ws.url, 'wss://n7.example/ws');
  assert.equal(net.fetches.length, 0);
});

test('follows a redirect frame to the home node', async (t) => {
  const net = fakeNet();
  const c = client(net);
  t.after(() => c.close());
  const redirects: { url: string; epoch: number }[] = [];
  c.on('redirect', (r) => redirects.push(r));
  const p = c.connect();
  const first = await net.socket(0);
  first.accept();
  first.reply({ redirect: { url: 'ws://10.0.0.2:7400', epoch: '3' } });
  const second = await net.socket(1);
  assert.equal(second.url, 'ws://10.0.0.2:7400');
  assert.equal(first.closedByClient, 1000);
  second.accept();
  assert.equal(second.of('hello').length, 1);
  second.reply(welcome({ node: 'node-2' }));
  assert.equal((await p).node, 'node-2');
  assert.deepEqual(redirects, [{ url: 'ws://10.0.0.2:7400', epoch: 3 }]);
  assert.equal(net.fetches.length, 1, 'a redirect is followed without asking the router again');
});

test('after four redirects in a row it backs off and asks the router again', async (t) => {
  const net = fakeNet();
  const c = client(net);
  t.after(() => c.close());
  void c.connect();
  for (let i = 0; i < 5; i++) {
    const ws = await net.socket(i);
    ws.accept();
    ws.reply({ redirect: { url: `ws://hop-${i}`, epoch: '1' } });
  }
  await waitFor(() => net.fetches.length === 2, 'a second route lookup');
  const again = await net.socket(5);
  assert.equal(again.url, 'ws://node-1');
  assert.deepEqual(
    net.sockets.map((s) => s.url),
    ['ws://node-1', 'ws://hop-0', 'ws://hop-1', 'ws://hop-2', 'ws://hop-3', 'ws://node-1'],
  );
});

test('a failed route lookup is reported and retried', async (t) => {
  const net = fakeNet();
  let calls = 0;
  net.handler = () => (++calls === 1 ? json(503, { error: 'the cluster has no ring yet' }) : json(200, { url: 'ws://n', epoch: 1 }));
  const c = client(net);
  t.after(() => c.close());
  const errors: ChatError[] = [];
  c.on('error', (e) => errors.push(e));
  void c.connect();
  const ws = await net.socket(0);
  assert.equal(ws.url, 'ws://n');
  assert.equal(errors.length, 1);
  assert.equal(errors[0]!.code, 'HTTP');
  assert.equal(errors[0]!.status, 503);
  assert.match(errors[0]!.message, /no ring yet/);
});

test('reconnects after a drop: resumes after lastSeq, drops repeats, re-sends unanswered sends in order', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const seen: number[] = [];
  c.on('message', ({ seq }) => seen.push(seq));
  const a = c.send({ to: 'bob', body: 'a', clientMsgId: 'm-a' });
  const b = c.send({ to: 'bob', body: 'b', clientMsgId: 'm-b' });
  c.send({ to: 'bob', body: 'c', clientMsgId: 'm-c' });
  assert.deepEqual(ws.of('send').map((s) => s.clientMsgId), ['m-a', 'm-b', 'm-c']);
  ws.reply({ sent: { clientMsgId: 'm-b', msgId: 'id-b', ts: '5' } });
  assert.equal((await b.sent).msgId, 'id-b');
  for (const seq of [1, 2, 3]) ws.reply({ deliver: { seq: String(seq), message: { msgId: `x${seq}`, from: 'bob', to: 'alice', body: 'hi' } } });
  assert.equal(c.lastSeq, 3);
  ws.drop(1006);
  assert.equal(c.state, 'reconnecting');
  // Made while down: waits for the next connection, after the older ones.
  c.send({ to: 'bob', body: 'd', clientMsgId: 'm-d' });

  const ws2 = await opening(net);
  assert.equal(net.fetches.length, 2, 'the route is looked up again');
  ws2.accept();
  assert.deepEqual(ws2.of('hello')[0]!.resumeAfter, '3');
  ws2.reply(welcome({ cursor: '2' }));
  assert.deepEqual(ws2.of('send').map((s) => s.clientMsgId), ['m-a', 'm-c', 'm-d']);
  assert.deepEqual(ws2.of('send')[0], { clientMsgId: 'm-a', to: 'bob', body: 'a' });
  // The node resends what it had no ack for: processed already, dropped.
  ws2.reply({ deliver: { seq: '3', message: { msgId: 'x3', from: 'bob', to: 'alice', body: 'hi' } } });
  ws2.reply({ deliver: { seq: '4', message: { msgId: 'x4', from: 'bob', to: 'alice', body: 'hi' } } });
  assert.deepEqual(seen, [1, 2, 3, 4]);
  assert.equal(c.lastSeq, 4);
  ws2.reply({ sent: { clientMsgId: 'm-a', msgId: 'id-a', ts: '6' } });
  assert.equal((await a.sent).msgId, 'id-a');
  // Acks: the re-asserted 3 (above the cursor 2), then 4.
  await waitFor(() => ws2.of('ack').some((x) => x.upToSeq === '4'), 'the ack of 4');
  assert.equal(ws2.of('ack')[0]!.upToSeq, '3');
});

test('the state goes connecting -> open -> reconnecting -> open -> closed', async (t) => {
  const net = fakeNet();
  const c = client(net);
  t.after(() => c.close());
  const states: ConnState[] = [];
  c.on('state', (s) => states.push(s));
  const p = c.connect();
  const ws = await net.socket(0);
  ws.accept();
  ws.reply(welcome());
  await p;
  ws.drop();
  await reconnect(net, c);
  c.close();
  assert.deepEqual(states, ['connecting', 'open', 'reconnecting', 'open', 'closed']);
});

test('a connection that gets no welcome in time is dropped and tried again', async (t) => {
  const net = fakeNet();
  const c = client(net, { requestTimeoutMs: 100 });
  t.after(() => c.close());
  const p = c.connect();
  const ws = await net.socket(0);
  ws.accept();
  await waitFor(() => net.sockets.length === 2, 'a second attempt');
  assert.equal(ws.closedByClient, 1000);
  const ws2 = net.sockets[1]!;
  ws2.accept();
  ws2.reply(welcome());
  await p;
});

test('SHUTTING_DOWN: waits at least retryAfterMs before reconnecting', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const errors: string[] = [];
  c.on('error', (e) => errors.push(e.code));
  ws.reply({ error: { code: 'ERROR_CODE_SHUTTING_DOWN', message: 'stopping', retryAfterMs: 150 } });
  const t0 = performance.now();
  ws.drop(1001);
  await net.socket(1);
  assert.ok(performance.now() - t0 >= 140, `reconnected after ${performance.now() - t0} ms`);
  assert.deepEqual(errors, ['SHUTTING_DOWN']);
});

test('a token function is called again after TOKEN_EXPIRED', async (t) => {
  const net = fakeNet();
  let calls = 0;
  const c = client(net, { token: () => jwt('alice', { n: ++calls }) });
  t.after(() => c.close());
  assert.equal(calls, 1, 'called once to learn the user');
  assert.equal(c.user, 'alice');
  const errors: string[] = [];
  c.on('error', (e) => errors.push(e.code));
  const p = c.connect();
  const ws = await net.socket(0);
  ws.accept();
  const first = ws.of('hello')[0]!.token;
  ws.reply({ error: { code: 'ERROR_CODE_TOKEN_EXPIRED', message: 'expired' } });
  const ws2 = await net.socket(1);
  ws2.accept();
  assert.equal(calls, 2);
  assert.notEqual(ws2.of('hello')[0]!.token, first);
  ws2.reply(welcome());
  await p;
  assert.deepEqual(errors, ['TOKEN_EXPIRED']);
});

test('an async token function; TOO_MANY_DEVICES then a 1008 close asks it again', async (t) => {
  const net = fakeNet();
  let calls = 0;
  const c = client(net, { token: async () => jwt('alice', { n: ++calls }) });
  t.after(() => c.close());
  const p = c.connect();
  const ws = await net.socket(0);
  assert.equal(c.user, 'alice');
  ws.accept();
  ws.reply({ error: { code: 'ERROR_CODE_TOO_MANY_DEVICES', message: 'too many' } });
  ws.drop(1008);
  const ws2 = await net.socket(1);
  ws2.accept();
  assert.equal(calls, 2);
  ws2.reply(welcome());
  await p;
});

test('a fixed token refused with TOKEN_INVALID stops: closed, error, connect() rejects, no retries', async (t) => {
  const net = fakeNet();
  const c = client(net);
  t.after(() => c.close());
  const errors: string[] = [];
  c.on('error', (e) => errors.push(e.code));
  const pending = c.send({ to: 'bob', body: 'x' });
  const p = c.connect();
  const ws = await net.socket(0);
  ws.accept();
  ws.reply({ error: { code: 'ERROR_CODE_TOKEN_INVALID', message: 'bad signature' } });
  await assert.rejects(p, (e: ChatError) => e.code === 'TOKEN_INVALID');
  await assert.rejects(pending.sent, (e: ChatError) => e.code === 'TOKEN_INVALID');
  assert.equal(c.state, 'closed');
  assert.deepEqual(errors, ['TOKEN_INVALID']);
  await sleep(50);
  assert.equal(net.sockets.length, 1);
  await assert.rejects(c.connect(), (e: ChatError) => e.code === 'TOKEN_INVALID');
});

test('close() rejects pending requests and sends with CLOSED and stops reconnecting', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const send = c.send({ to: 'bob', body: 'x' });
  // history() is answered by the drop already.
  const hist = assert.rejects(c.history(), (e: ChatError) => e.code === 'DISCONNECTED');
  ws.drop();
  await opening(net);
  c.close();
  await assert.rejects(send.sent, (e: ChatError) => e.code === 'CLOSED' && e.ref === send.clientMsgId);
  await hist;
  const later = c.groupInfo('g-1');
  await assert.rejects(later, (e: ChatError) => e.code === 'CLOSED');
  await assert.rejects(c.send({ to: 'bob', body: 'y' }).sent, (e: ChatError) => e.code === 'CLOSED');
  await assert.rejects(c.connect(), (e: ChatError) => e.code === 'CLOSED');
  assert.equal(c.state, 'closed');
  const n = net.sockets.length;
  await sleep(50);
  assert.equal(net.sockets.length, n, 'no new socket after close()');
});

test('close() while connected rejects what is in flight with CLOSED', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const send = c.send({ to: 'bob', body: 'x' });
  const q = c.presenceQuery(['bob']);
  assert.equal(ws.of('presence').length, 1);
  c.close();
  await assert.rejects(send.sent, (e: ChatError) => e.code === 'CLOSED');
  await assert.rejects(q, (e: ChatError) => e.code === 'CLOSED');
  assert.equal(ws.closedByClient, 1000);
});
