import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Message } from '@chat/client';
import { Store } from '../src/store.js';

const msg = (from: string, to: string, id: string, extra: Partial<Message> = {}): Message =>
  ({ msgId: id, from, fromDevice: 'd', to, body: `body ${id}`, ts: 1000, clientMsgId: `c-${id}`, ...extra }) as Message;

test('incoming messages make conversations with unread counts, opening one clears it', () => {
  const s = new Store('bob');
  assert.equal(s.onMessage(1, msg('alice', 'bob', 'm1')), 'alice');
  s.onMessage(2, msg('carol', 'bob', 'm2'));
  s.onMessage(3, msg('alice', 'bob', 'm3', { ts: 2000 }));
  assert.equal(s.conversations.get('alice')!.unread, 2);
  assert.equal(s.conversations.get('carol')!.unread, 1);
  assert.deepEqual(s.sorted().map((c) => c.id), ['alice', 'carol']);
  s.openConversation('alice');
  assert.equal(s.conversations.get('alice')!.unread, 0);
  assert.equal(s.conversations.get('carol')!.unread, 1);
});

test('the read marker stops before the oldest message unread elsewhere (markers are cumulative)', () => {
  const s = new Store('bob');
  s.onMessage(1, msg('alice', 'bob', 'm1'));
  s.onMessage(2, msg('carol', 'bob', 'm2'));
  s.onMessage(3, msg('alice', 'bob', 'm3'));
  assert.equal(s.readTarget(), undefined, 'nothing looked at yet');
  s.openConversation('alice');
  assert.equal(s.readTarget(), 1, 'carol\'s seq 2 is unread, so only up to 1');
  s.markedRead(1);
  assert.equal(s.readTarget(), undefined);
  s.openConversation('carol');
  assert.equal(s.readTarget(), 3);
  s.markedRead(3);
  // A message arriving in the open conversation is read at once.
  s.onMessage(4, msg('carol', 'bob', 'm4'));
  assert.equal(s.conversations.get('carol')!.unread, 0);
  assert.equal(s.readTarget(), 4);
});

test('another device\'s read state clears unread counts up to it', () => {
  const s = new Store('bob');
  s.onMessage(5, msg('alice', 'bob', 'm5'));
  s.onMessage(6, msg('alice', 'bob', 'm6'));
  s.onReadState(5);
  assert.equal(s.conversations.get('alice')!.unread, 1);
  s.onReadState(9);
  assert.equal(s.conversations.get('alice')!.unread, 0);
  assert.equal(s.readTarget(), undefined);
});

test('ticks go pending, sent, delivered, read and never back', () => {
  const s = new Store('alice');
  const m = s.addOutgoing('bob', 'direct', 'c1', 'hi');
  assert.equal(m.tick, 'pending');
  s.onSent('c1', 'm1', 1500);
  assert.equal(m.tick, 'sent');
  s.onReceipt(10, { kind: 'read', by: 'bob', msgIds: ['m1'], ts: 2 });
  assert.equal(m.tick, 'read');
  s.onReceipt(11, { kind: 'delivered', by: 'bob', msgIds: ['m1'], ts: 1 });
  assert.equal(m.tick, 'read', 'a late delivered receipt does not lower it');
});

test('own messages from another device join the conversation once; this device\'s copy only confirms', () => {
  const s = new Store('alice');
  const mine = s.addOutgoing('bob', 'direct', 'c1', 'from this tab');
  s.onMessage(7, msg('alice', 'bob', 'm1', { clientMsgId: 'c1' }));
  assert.equal(mine.seq, 7);
  assert.equal(mine.tick, 'sent');
  s.onMessage(8, msg('alice', 'bob', 'm2', { clientMsgId: 'other-device' }));
  const conv = s.conversations.get('bob')!;
  assert.equal(conv.messages.length, 2);
  assert.equal(conv.unread, 0, 'own messages are never unread');
});

test('duplicates (history and live) are shown once, in seq order', () => {
  const s = new Store('bob');
  s.onMessage(3, msg('alice', 'bob', 'm3'));
  s.onMessage(1, msg('alice', 'bob', 'm1'));
  s.onMessage(3, msg('alice', 'bob', 'm3'));
  s.onMessage(2, msg('alice', 'bob', 'm2'));
  assert.deepEqual(s.conversations.get('alice')!.messages.map((m) => m.seq), [1, 2, 3]);
  assert.equal(s.conversations.get('alice')!.unread, 3);
});

test('group messages and events go to the group\'s conversation', () => {
  const s = new Store('bob');
  s.onGroupEvent(1, { group: 'g-1', kind: 'created', by: 'alice', users: ['alice', 'bob', 'carol'], name: 'team', ts: 5, eventId: 'e' });
  s.onMessage(2, msg('carol', 'g-1', 'm2', { group: 'g-1' }));
  const c = s.conversations.get('g-1')!;
  assert.equal(c.kind, 'group');
  assert.equal(c.title, 'team');
  assert.equal(c.messages[0]!.body, 'alice created “team” with you, carol');
  assert.equal(c.unread, 1);
  assert.deepEqual(s.peers(), [], 'group members are not watched as peers');
});

test('typing shows until it expires, is renewed, and ends with the message', () => {
  const s = new Store('bob');
  s.onTyping('alice', undefined, true, 6000, 1000);
  assert.equal(s.typingIn('alice', 2000), 'alice');
  assert.equal(s.typingIn('alice', 7001), undefined, 'expired');
  s.onTyping('alice', undefined, true, 6000, 8000);
  s.stopTyping('alice', 'alice');
  assert.equal(s.typingIn('alice', 8001), undefined);
  s.onTyping('carol', 'g-1', true, 6000, 1000);
  assert.equal(s.typingIn('g-1', 1001), 'carol');
  s.onTyping('carol', 'g-1', false, 0, 1002);
  assert.equal(s.typingIn('g-1', 1003), undefined);
});

test('a message written while disconnected stays last until its ✓, then takes its place by time', () => {
  const s = new Store('bob');
  s.onMessage(1, msg('alice', 'bob', 'm1', { ts: 1000 }));
  const mine = s.addOutgoing('alice', 'direct', 'c1', 'written offline', undefined, 1500);
  s.onMessage(2, msg('alice', 'bob', 'm2', { ts: 1200 }));
  s.onMessage(3, msg('alice', 'bob', 'm3', { ts: 1300 }));
  const bodies = () => s.conversations.get('alice')!.messages.map((m) => m.body);
  assert.deepEqual(bodies(), ['body m1', 'body m2', 'body m3', 'written offline']);
  s.onSent('c1', 'm9', 2000);
  assert.equal(mine.tick, 'sent');
  s.onMessage(4, msg('alice', 'bob', 'm4', { ts: 2500 }));
  assert.deepEqual(bodies(), ['body m1', 'body m2', 'body m3', 'written offline', 'body m4']);
});
