// Requests: correlation by requestId, refusals by ref, timeouts, disconnects, presence watch.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ChatError } from '../src/index.js';
import type { PresenceStatus } from '../src/index.js';
import { client, connected, fakeNet, reconnect, waitFor, welcome } from './fakes.js';

/** The requestId of the n-th frame of a kind the client wrote. */
function rid(frames: Record<string, unknown>[], n = 0): string {
  return frames[n]!.requestId as string;
}

test('answers are matched to requests by requestId, whatever their order', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const h1 = c.history({ limit: 2 });
  const h2 = c.history({ beforeSeq: 40, limit: 1 });
  const [a, b] = ws.of('history');
  assert.deepEqual(a, { limit: 2, requestId: a!.requestId });
  assert.deepEqual(b, { beforeSeq: '40', limit: 1, requestId: b!.requestId });
  assert.notEqual(a!.requestId, b!.requestId);
  ws.reply({ history: { requestId: b!.requestId, entries: [{ seq: '39', receipt: { kind: 'RECEIPT_KIND_DELIVERED', by: 'bob', msgIds: ['x'] } }] } });
  ws.reply({ history: { requestId: a!.requestId, entries: [{ seq: '44', message: { msgId: 'm', from: 'bob', to: 'alice', body: 'hi' } }], more: true } });
  const [pa, pb] = await Promise.all([h1, h2]);
  assert.equal(pa.more, true);
  assert.equal(pa.entries[0]!.message!.body, 'hi');
  assert.equal(pb.more, false);
  assert.equal(pb.entries[0]!.receipt!.kind, 'delivered');
  assert.equal(pb.entries[0]!.seq, 39);
});

test('an error with the requestId as ref rejects that request only', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const info = c.groupInfo('g-1');
  const mine = c.myGroups();
  const [gi, gm] = ws.of('group');
  assert.deepEqual(gi, { requestId: gi!.requestId, info: { group: 'g-1' } });
  assert.deepEqual(gm, { requestId: gm!.requestId, mine: true });
  ws.reply({ error: { code: 'ERROR_CODE_NOT_A_MEMBER', message: 'not a member', ref: gi!.requestId } });
  await assert.rejects(info, (e: ChatError) => e.code === 'NOT_A_MEMBER' && e.ref === gi!.requestId);
  ws.reply({ group: { requestId: gm!.requestId, groups: { groups: [{ group: 'g-2', name: 'team' }] } } });
  assert.deepEqual(await mine, [{ group: 'g-2', name: 'team' }]);
});

test('group operations: frames and answers', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const info = {
    group: 'g-1',
    name: 'team',
    createdBy: 'alice',
    createdMs: '1795000000000',
    members: [{ user: 'alice', admin: true, joinedMs: '1795000000000' }, { user: 'bob', joinedMs: '1795000000001' }],
  };
  const want = {
    group: 'g-1',
    name: 'team',
    createdBy: 'alice',
    createdMs: 1795000000000,
    members: [
      { user: 'alice', admin: true, joinedMs: 1795000000000 },
      { user: 'bob', admin: false, joinedMs: 1795000000001 },
    ],
  };
  const calls: [Promise<unknown>, Record<string, unknown>][] = [
    [c.createGroup('team', ['bob']), { create: { name: 'team', members: ['bob'] } }],
    [c.addMembers('g-1', ['carol']), { add: { group: 'g-1', users: ['carol'] } }],
    [c.removeMembers('g-1', ['carol']), { remove: { group: 'g-1', users: ['carol'] } }],
    [c.renameGroup('g-1', 'team'), { rename: { group: 'g-1', name: 'team' } }],
    [c.groupInfo('g-1'), { info: { group: 'g-1' } }],
  ];
  const frames = ws.of('group');
  calls.forEach(([, op], i) => assert.deepEqual(frames[i], { requestId: rid(frames, i), ...op }));
  frames.forEach((f) => ws.reply({ group: { requestId: f.requestId, info } }));
  for (const [p] of calls) assert.deepEqual(await p, want);

  const leave = c.leaveGroup('g-1');
  const receipts = c.groupReceipts('g-1', 'm-1');
  const [fl, fr] = ws.of('group').slice(5);
  assert.deepEqual(fl, { requestId: fl!.requestId, leave: { group: 'g-1' } });
  assert.deepEqual(fr, { requestId: fr!.requestId, receipts: { group: 'g-1', msgId: 'm-1', who: true } });
  ws.reply({ group: { requestId: fl!.requestId } });
  ws.reply({ group: { requestId: fr!.requestId, receipts: { group: 'g-1', msgId: 'm-1', delivered: 2, read: 1, deliveredBy: ['bob', 'carol'], readBy: ['bob'] } } });
  assert.equal(await leave, undefined);
  assert.deepEqual(await receipts, { group: 'g-1', msgId: 'm-1', delivered: 2, read: 1, deliveredBy: ['bob', 'carol'], readBy: ['bob'] });
});

test('block and unblock answer with the whole list', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const b = c.block('mallory');
  const u = c.unblock('eve');
  const [fb, fu] = ws.of('block');
  assert.deepEqual(fb, { requestId: fb!.requestId, block: 'mallory' });
  assert.deepEqual(fu, { requestId: fu!.requestId, unblock: 'eve' });
  ws.reply({ blocked: { requestId: fu!.requestId } });
  ws.reply({ blocked: { requestId: fb!.requestId, users: ['eve', 'mallory'] } });
  assert.deepEqual(await b, ['eve', 'mallory']);
  assert.deepEqual(await u, []);
});

test('a request without an answer times out', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net, { requestTimeoutMs: 1000 });
  t.after(() => c.close());
  const q = c.presenceQuery(['bob']);
  const id = rid(ws.of('presence'));
  await assert.rejects(q, (e: ChatError) => e.code === 'TIMEOUT' && e.ref === id);
  // A late answer is harmless.
  ws.reply({ presence: { requestId: id, statuses: [] } });
});

test('a request made before the connection waits for it; one cut by a drop fails with DISCONNECTED', async (t) => {
  const net = fakeNet();
  const c = client(net);
  t.after(() => c.close());
  const early = c.history();
  const p = c.connect();
  const ws = await net.socket(0);
  ws.accept();
  assert.equal(ws.of('history').length, 0);
  ws.reply(welcome());
  await p;
  const h = ws.of('history')[0]!;
  ws.reply({ history: { requestId: h.requestId } });
  assert.deepEqual(await early, { entries: [], more: false });
  const cut = c.downloadUrl('m1', 44);
  assert.deepEqual(ws.of('media')[0], { requestId: rid(ws.of('media')), download: { mediaId: 'm1', seq: '44' } });
  ws.drop();
  await assert.rejects(cut, (e: ChatError) => e.code === 'DISCONNECTED');
});

test('the presence watch list is sent again after every reconnection', async (t) => {
  const net = fakeNet();
  const { c, ws } = await connected(net);
  t.after(() => c.close());
  const pushed: PresenceStatus[] = [];
  c.on('presence', (s) => pushed.push(s));
  const w = c.presenceWatch(['bob', 'carol']);
  const f = ws.of('presence')[0]!;
  assert.deepEqual(f, { requestId: f.requestId, watch: { users: ['bob', 'carol'] } });
  ws.reply({ presence: { requestId: f.requestId, statuses: [{ user: 'bob', online: true }, { user: 'carol', lastSeenMs: '5' }] } });
  assert.deepEqual(await w, [
    { user: 'bob', online: true, lastSeenMs: 0 },
    { user: 'carol', online: false, lastSeenMs: 5 },
  ]);
  assert.equal(pushed.length, 2, 'watch answers are reported as presence events');

  ws.drop();
  const ws2 = await reconnect(net, c);
  const f2 = ws2.of('presence')[0]!;
  assert.deepEqual(f2, { requestId: f2.requestId, watch: { users: ['bob', 'carol'] } });
  ws2.reply({ presence: { requestId: f2.requestId, statuses: [{ user: 'bob' }, { user: 'carol' }] } });
  await waitFor(() => pushed.length === 4, 'the re-watch answer as events');
  assert.deepEqual(pushed.slice(2).map((s) => s.online), [false, false]);

  // A watch cut by a drop is not failed: it is sent again and answered on the next connection.
  const w3 = c.presenceWatch(['dave']);
  ws2.drop();
  const ws3 = await reconnect(net, c);
  const f3 = ws3.of('presence');
  assert.equal(f3.length, 1, 'one watch: the pending one, not a second copy');
  assert.deepEqual(f3[0], { requestId: f3[0]!.requestId, watch: { users: ['dave'] } });
  ws3.reply({ presence: { requestId: f3[0]!.requestId, statuses: [{ user: 'dave', online: true }] } });
  assert.deepEqual(await w3, [{ user: 'dave', online: true, lastSeenMs: 0 }]);

  // An empty list stops watching, and nothing is re-sent after that.
  const stop = c.presenceWatch([]);
  const fs = ws3.of('presence')[1]!;
  assert.deepEqual(fs, { requestId: fs.requestId, watch: {} });
  ws3.reply({ presence: { requestId: fs.requestId } });
  assert.deepEqual(await stop, []);
  ws3.drop();
  const ws4 = await reconnect(net, c);
  assert.equal(ws4.of('presence').length, 0);
});
