// Every frame example of docs/protocol.md, verbatim: read into the library's types (server
// frames), or written by the library's encoders (client frames).

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import {
  ackFrame,
  blockFrame,
  groupFrame,
  helloFrame,
  historyFrame,
  mediaDownloadFrame,
  mediaUploadFrame,
  pingFrame,
  presenceFrame,
  readFrame,
  sendFrame,
  typingFrame,
  u64,
} from '../src/frames.js';
import { tokenClaims } from '../src/ids.js';
import { decodeServerFrame, fromBase64, toBase64, type ServerFrame } from '../src/wire.js';

const DOC = readFileSync(new URL('../../../../docs/protocol.md', import.meta.url), 'utf8');

/** A fixture copied from docs/protocol.md; fails if the doc no longer has it word for word. */
function doc(example: string): string {
  assert.ok(DOC.includes(example), `docs/protocol.md no longer has this example: ${example}`);
  return example;
}

function read(example: string): ServerFrame {
  return decodeServerFrame(doc(example));
}

const SHA = '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08';
/** "/9j/4AAQ..." from the doc: the alphabet's part is a JPEG's first bytes. */
const THUMB = Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10]);

test('welcome', () => {
  const f = read(
    '{"welcome":{"user":"alice","device":"phone","node":"node-1","cursor":"40","inboxSeq":"42","limits":{"maxFrameBytes":65536,"maxBodyBytes":32768,"maxIdBytes":64,"maxHistoryPage":200,"maxDevicesPerUser":8,"maxInflightSends":256,"maxMediaBytes":"67108864","maxThumbnailBytes":16384},"serverTimeMs":"1795000000000"}}',
  );
  assert.deepEqual(f, {
    kind: 'welcome',
    welcome: {
      user: 'alice',
      device: 'phone',
      node: 'node-1',
      cursor: 40,
      inboxSeq: 42,
      limits: {
        maxFrameBytes: 65536,
        maxBodyBytes: 32768,
        maxIdBytes: 64,
        maxHistoryPage: 200,
        maxDevicesPerUser: 8,
        maxInflightSends: 256,
        maxMediaBytes: 67108864,
        maxThumbnailBytes: 16384,
      },
      serverTimeMs: 1795000000000,
      readSeq: 0,
    },
  });
});

test('sent', () => {
  const f = read('{"sent":{"clientMsgId":"6f1c-01","msgId":"019aa1b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b","ts":"1795000000123"}}');
  assert.deepEqual(f, {
    kind: 'sent',
    sent: { clientMsgId: '6f1c-01', msgId: '019aa1b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b', ts: 1795000000123 },
  });
});

test('deliver: message, receipt, failed, group message, group event, attachment', () => {
  assert.deepEqual(
    read('{"deliver":{"seq":"43","message":{"msgId":"019aa1b2-...","from":"alice","fromDevice":"phone","to":"bob","body":"hi bob","ts":"1795000000123","clientMsgId":"6f1c-01"}}}'),
    {
      kind: 'deliver',
      seq: 43,
      entry: {
        seq: 43,
        message: {
          msgId: '019aa1b2-...',
          from: 'alice',
          fromDevice: 'phone',
          to: 'bob',
          body: 'hi bob',
          ts: 1795000000123,
          clientMsgId: '6f1c-01',
        },
      },
    },
  );
  assert.deepEqual(
    read('{"deliver":{"seq":"44","receipt":{"kind":"RECEIPT_KIND_DELIVERED","by":"bob","msgIds":["019aa1b2-..."],"ts":"1795000000456"}}}'),
    {
      kind: 'deliver',
      seq: 44,
      entry: { seq: 44, receipt: { kind: 'delivered', by: 'bob', msgIds: ['019aa1b2-...'], ts: 1795000000456 } },
    },
  );
  assert.deepEqual(
    read('{"deliver":{"seq":"45","failed":{"msgId":"019aa1b2-...","to":"carol","clientMsgId":"6f1c-03","reason":"recipient\'s node unreachable: ...","ts":"1795086400000"}}}'),
    {
      kind: 'deliver',
      seq: 45,
      entry: {
        seq: 45,
        failed: {
          msgId: '019aa1b2-...',
          to: 'carol',
          clientMsgId: '6f1c-03',
          reason: "recipient's node unreachable: ...",
          ts: 1795086400000,
        },
      },
    },
  );
  const g = read('{"deliver":{"seq":"46","message":{"msgId":"019aa1b2-...","from":"alice","fromDevice":"phone","to":"g-019a...","group":"g-019a...","body":"hi all","ts":"1795000000123","clientMsgId":"6f1c-02"}}}');
  assert.equal(g.kind, 'deliver');
  assert.equal(g.kind === 'deliver' && g.entry?.message?.group, 'g-019a...');
  assert.deepEqual(
    read('{"deliver":{"seq":"47","groupEvent":{"group":"g-019a...","kind":"GROUP_EVENT_KIND_ADDED","by":"alice","users":["dave"],"name":"team","ts":"1795000000789","eventId":"019aa1b2-..."}}}'),
    {
      kind: 'deliver',
      seq: 47,
      entry: {
        seq: 47,
        groupEvent: {
          group: 'g-019a...',
          kind: 'added',
          by: 'alice',
          users: ['dave'],
          name: 'team',
          ts: 1795000000789,
          eventId: '019aa1b2-...',
        },
      },
    },
  );
  assert.deepEqual(
    read(`{"deliver":{"seq":"48","message":{"msgId":"019aa1b2-...","from":"alice","fromDevice":"phone","to":"bob","ts":"1795000000123","clientMsgId":"6f1c-04","attachment":{"mediaId":"m019aa1b27c3d7e008000000000000001","mime":"image/jpeg","size":"2097152","sha256":"${SHA}","thumbnail":"/9j/4AAQ...","name":"beach.jpg","node":"n1"}}}}`),
    {
      kind: 'deliver',
      seq: 48,
      entry: {
        seq: 48,
        message: {
          msgId: '019aa1b2-...',
          from: 'alice',
          fromDevice: 'phone',
          to: 'bob',
          body: '',
          ts: 1795000000123,
          clientMsgId: '6f1c-04',
          attachment: {
            mediaId: 'm019aa1b27c3d7e008000000000000001',
            mime: 'image/jpeg',
            size: 2097152,
            sha256: SHA,
            thumbnail: THUMB,
            name: 'beach.jpg',
            node: 'n1',
          },
        },
      },
    },
  );
});

test('history (the doc elides the entries: one of each kind in their place)', () => {
  const shape = doc('{"history":{"requestId":"h1","entries":[{"seq":"39","message":{...}},{"seq":"38","message":{...}}],"more":true}}');
  const text = shape
    .replace('"message":{...}', '"message":{"msgId":"a","from":"bob","to":"alice","body":"x","ts":"5"}')
    .replace('"message":{...}', '"receipt":{"kind":"RECEIPT_KIND_READ","by":"bob","msgIds":["m"],"ts":"6"}');
  assert.deepEqual(decodeServerFrame(text), {
    kind: 'history',
    requestId: 'h1',
    entries: [
      { seq: 39, message: { msgId: 'a', from: 'bob', fromDevice: '', to: 'alice', body: 'x', ts: 5, clientMsgId: '' } },
      { seq: 38, receipt: { kind: 'read', by: 'bob', msgIds: ['m'], ts: 6 } },
    ],
    more: true,
  });
});

test('pong, typing, blocked', () => {
  assert.deepEqual(read('{"pong":{"nonce":"7","serverTimeMs":"1795000000500"}}'), {
    kind: 'pong',
    nonce: 7,
    serverTimeMs: 1795000000500,
  });
  assert.deepEqual(read('{"typing":{"from":"alice","fromDevice":"phone","state":"TYPING_STATE_TYPING","expiresInMs":6000}}'), {
    kind: 'typing',
    notice: { from: 'alice', fromDevice: 'phone', typing: true, expiresInMs: 6000 },
  });
  assert.deepEqual(decodeServerFrame('{"typing":{"from":"bob","group":"g-1","state":"TYPING_STATE_STOPPED"}}'), {
    kind: 'typing',
    notice: { from: 'bob', fromDevice: '', group: 'g-1', typing: false, expiresInMs: 0 },
  });
  assert.deepEqual(read('{"blocked":{"requestId":"b1","users":["mallory"]}}'), {
    kind: 'blocked',
    requestId: 'b1',
    users: ['mallory'],
  });
});

test('presence, presenceUpdate, readState', () => {
  assert.deepEqual(
    read('{"presence":{"requestId":"p1","statuses":[{"user":"bob","online":true,"lastSeenMs":"1795000000000"},{"user":"carol","lastSeenMs":"1794990000000"}]}}'),
    {
      kind: 'presence',
      requestId: 'p1',
      statuses: [
        { user: 'bob', online: true, lastSeenMs: 1795000000000 },
        { user: 'carol', online: false, lastSeenMs: 1794990000000 },
      ],
    },
  );
  assert.deepEqual(read('{"presenceUpdate":{"status":{"user":"bob","lastSeenMs":"1795000015000"}}}'), {
    kind: 'presenceUpdate',
    status: { user: 'bob', online: false, lastSeenMs: 1795000015000 },
  });
  assert.deepEqual(read('{"readState":{"upToSeq":"42","device":"phone"}}'), {
    kind: 'readState',
    upToSeq: 42,
    device: 'phone',
  });
});

test('group: info, mine, receipts', () => {
  assert.deepEqual(
    read('{"group":{"requestId":"g1","info":{"group":"g-019a...","name":"team","createdBy":"alice","createdMs":"1795000000000","members":[{"user":"alice","admin":true,"joinedMs":"1795000000000"},{"user":"bob","joinedMs":"1795000000000"}]}}}'),
    {
      kind: 'group',
      requestId: 'g1',
      info: {
        group: 'g-019a...',
        name: 'team',
        createdBy: 'alice',
        createdMs: 1795000000000,
        members: [
          { user: 'alice', admin: true, joinedMs: 1795000000000 },
          { user: 'bob', admin: false, joinedMs: 1795000000000 },
        ],
      },
    },
  );
  assert.deepEqual(read('{"group":{"requestId":"g2","groups":{"groups":[{"group":"g-019a...","name":"team"}]}}}'), {
    kind: 'group',
    requestId: 'g2',
    groups: [{ group: 'g-019a...', name: 'team' }],
  });
  assert.deepEqual(
    read('{"group":{"requestId":"g3","receipts":{"group":"g-019a...","msgId":"019a...","delivered":2,"read":1,"deliveredBy":["bob","carol"],"readBy":["bob"]}}}'),
    {
      kind: 'group',
      requestId: 'g3',
      receipts: { group: 'g-019a...', msgId: '019a...', delivered: 2, read: 1, deliveredBy: ['bob', 'carol'], readBy: ['bob'] },
    },
  );
  // A leave is answered with no reply field; a user in no group gets an empty list.
  assert.deepEqual(decodeServerFrame('{"group":{"requestId":"g4"}}'), { kind: 'group', requestId: 'g4' });
  assert.deepEqual(decodeServerFrame('{"group":{"requestId":"g5","groups":{}}}'), { kind: 'group', requestId: 'g5', groups: [] });
});

test('media, error, redirect', () => {
  const url = `http://10.0.0.11:7700/media/m019aa1b27c3d7e008000000000000001?exp=1795000300123&size=2097152&sha256=${SHA}&sig=...`;
  assert.deepEqual(
    read(`{"media":{"requestId":"u1","mediaId":"m019aa1b27c3d7e008000000000000001","method":"PUT","url":"${url}","headers":[{"name":"content-type","value":"image/jpeg"}],"expiresMs":"1795000300123"}}`),
    {
      kind: 'media',
      requestId: 'u1',
      reply: {
        mediaId: 'm019aa1b27c3d7e008000000000000001',
        method: 'PUT',
        url,
        headers: [{ name: 'content-type', value: 'image/jpeg' }],
        expiresMs: 1795000300123,
      },
    },
  );
  assert.deepEqual(
    read('{"error":{"code":"ERROR_CODE_BODY_TOO_LARGE","message":"message body of 40000 bytes is over the limit of 32768","ref":"6f1c-02"}}'),
    {
      kind: 'error',
      error: { code: 'BODY_TOO_LARGE', message: 'message body of 40000 bytes is over the limit of 32768', ref: '6f1c-02' },
    },
  );
  assert.deepEqual(decodeServerFrame('{"error":{"code":"ERROR_CODE_SHUTTING_DOWN","retryAfterMs":1000}}'), {
    kind: 'error',
    error: { code: 'SHUTTING_DOWN', message: '', retryAfterMs: 1000 },
  });
  // Enums as numbers are read too (proto3 JSON parsers accept both).
  const numeric = decodeServerFrame('{"error":{"code":23}}');
  assert.equal(numeric.kind === 'error' ? numeric.error.code : '', 'NOT_A_MEMBER');
  assert.deepEqual(read('{"redirect":{"url":"ws://10.0.0.2:7400","epoch":"3"}}'), {
    kind: 'redirect',
    url: 'ws://10.0.0.2:7400',
    epoch: 3,
  });
  assert.deepEqual(decodeServerFrame('{"somethingNew":{}}'), { kind: 'unknown', key: 'somethingNew' });
  assert.throws(() => decodeServerFrame('[1]'), SyntaxError);
  assert.throws(() => decodeServerFrame('not json'), SyntaxError);
});

/** `frame` equals the doc's example (as JSON values: key order does not matter). */
function same(frame: object, example: string): void {
  assert.deepEqual(JSON.parse(JSON.stringify(frame)), JSON.parse(doc(example)));
}

test('client frames match the doc', () => {
  same(helloFrame('eyJhbGciOi...', 'my-app/1.0', 0), '{"hello":{"token":"eyJhbGciOi...","agent":"my-app/1.0"}}');
  same(sendFrame({ clientMsgId: '6f1c-01', to: 'bob', body: 'hi bob' }), '{"send":{"clientMsgId":"6f1c-01","to":"bob","body":"hi bob"}}');
  same(
    sendFrame({ clientMsgId: '6f1c-02', group: 'g-019aa1b2-...', body: 'hi all' }),
    '{"send":{"clientMsgId":"6f1c-02","group":"g-019aa1b2-...","body":"hi all"}}',
  );
  // The doc's thumbnail is elided ("/9j/4AAQ..."): its bytes encode to the part before the dots.
  doc('{"send":{"clientMsgId":"6f1c-04","to":"bob","attachment":{"mediaId":"m019aa1b27c3d7e008000000000000001","thumbnail":"/9j/4AAQ...","name":"beach.jpg"}}}');
  assert.deepEqual(
    JSON.parse(JSON.stringify(sendFrame({ clientMsgId: '6f1c-04', to: 'bob', attachment: { mediaId: 'm019aa1b27c3d7e008000000000000001', thumbnail: THUMB, name: 'beach.jpg' } }))),
    { send: { clientMsgId: '6f1c-04', to: 'bob', attachment: { mediaId: 'm019aa1b27c3d7e008000000000000001', thumbnail: '/9j/4AAQ', name: 'beach.jpg' } } },
  );
  same(ackFrame(42), '{"ack":{"upToSeq":"42"}}');
  same(readFrame(42), '{"read":{"upToSeq":"42"}}');
  same(historyFrame('h1', 40, 2), '{"history":{"beforeSeq":"40","limit":2,"requestId":"h1"}}');
  same(typingFrame({ to: 'bob' }, true), '{"typing":{"to":"bob","state":"TYPING_STATE_TYPING"}}');
  same(typingFrame({ group: 'g-019aa1b2-...' }, true), '{"typing":{"group":"g-019aa1b2-...","state":"TYPING_STATE_TYPING"}}');
  assert.deepEqual(typingFrame({ to: 'bob' }, false), { typing: { to: 'bob', state: 'TYPING_STATE_STOPPED' } });
  same(groupFrame('g1', 'create', { name: 'team', members: ['bob', 'carol'] }), '{"group":{"requestId":"g1","create":{"name":"team","members":["bob","carol"]}}}');
  same(blockFrame('b1', { block: 'mallory' }), '{"block":{"requestId":"b1","block":"mallory"}}');
  same(presenceFrame('p1', 'watch', ['bob', 'carol']), '{"presence":{"requestId":"p1","watch":{"users":["bob","carol"]}}}');
  assert.deepEqual(presenceFrame('p2', 'watch', []), { presence: { requestId: 'p2', watch: {} } });
  same(
    mediaUploadFrame('u1', 'image/jpeg', 2097152, SHA),
    `{"media":{"requestId":"u1","upload":{"mime":"image/jpeg","size":"2097152","sha256":"${SHA}"}}}`,
  );
  same(mediaDownloadFrame('d1', 'm019aa1b27c3d7e008000000000000001', 44), '{"media":{"requestId":"d1","download":{"mediaId":"m019aa1b27c3d7e008000000000000001","seq":"44"}}}');
  same({ ...pingFrame(9), active: true }, '{"ping":{"nonce":"9"},"active":true}');
  // Defaults are omitted; resumeAfter is a string.
  assert.deepEqual(helloFrame('t', undefined, 0), { hello: { token: 't' } });
  assert.deepEqual(helloFrame('t', '', 7), { hello: { token: 't', resumeAfter: '7' } });
  assert.deepEqual(historyFrame('h2'), { history: { requestId: 'h2' } });
  assert.deepEqual(mediaDownloadFrame('d2', 'm1', 0), { media: { requestId: 'd2', download: { mediaId: 'm1' } } });
});

test('base64, uint64, tokens', () => {
  const bytes = Uint8Array.from({ length: 300 }, (_, i) => (i * 7) & 255);
  assert.equal(toBase64(bytes), Buffer.from(bytes).toString('base64'));
  assert.deepEqual(fromBase64(Buffer.from(bytes).toString('base64')), bytes);
  assert.deepEqual(fromBase64(Buffer.from(bytes).toString('base64url')), bytes);
  assert.equal(u64(2 ** 53), '9007199254740992');
  assert.equal(u64(1e21), '1000000000000000000000');
  const payload = Buffer.from(JSON.stringify({ sub: 'a/b+c', dev: 'web', exp: 1700000000 })).toString('base64url');
  assert.deepEqual(tokenClaims(`x.${payload}.y`), { sub: 'a/b+c', dev: 'web', exp: 1700000000 });
  assert.deepEqual(tokenClaims('garbage'), {});
});
