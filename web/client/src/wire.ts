// The canonical proto3 JSON of proto/chat/v1/client.proto, as text frames: pure functions that
// read server frames into the library's types (frames.ts writes client frames). On the wire
// 64-bit integers are strings, enums are names, bytes are base64, and defaults are omitted (so
// every field may be missing). Nothing here does I/O.

import type {
  Attachment,
  Entry,
  Failed,
  GroupEvent,
  GroupEventKind,
  GroupInfo,
  GroupReceipts,
  GroupSummary,
  Limits,
  MediaReply,
  Message,
  PresenceStatus,
  Receipt,
  ReceiptKind,
  Sent,
  Seq,
  TypingNotice,
  Welcome,
} from './types.js';

/** An `error` frame, its code without the `ERROR_CODE_` prefix. */
export interface WireError {
  code: string;
  message: string;
  ref?: string;
  retryAfterMs?: number;
}

/** One server frame, by kind. `entry` is null for an inbox entry of a kind this library does not know. */
export type ServerFrame =
  | { kind: 'welcome'; welcome: Welcome }
  | { kind: 'sent'; sent: Sent }
  | { kind: 'deliver'; seq: Seq; entry: Entry | null }
  | { kind: 'history'; requestId: string; entries: Entry[]; more: boolean }
  | { kind: 'pong'; nonce: number; serverTimeMs: number }
  | { kind: 'error'; error: WireError }
  | { kind: 'redirect'; url: string; epoch: number }
  | { kind: 'typing'; notice: TypingNotice }
  | { kind: 'blocked'; requestId: string; users: string[] }
  | { kind: 'presence'; requestId: string; statuses: PresenceStatus[] }
  | { kind: 'presenceUpdate'; status: PresenceStatus }
  | { kind: 'readState'; upToSeq: Seq; device: string }
  | {
      kind: 'group';
      requestId: string;
      info?: GroupInfo;
      groups?: GroupSummary[];
      receipts?: GroupReceipts;
    }
  | { kind: 'media'; requestId: string; reply: MediaReply }
  | { kind: 'unknown'; key: string };

type Json = Record<string, unknown>;

// ---- reading -------------------------------------------------------------------------------

function obj(v: unknown): Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : {};
}
function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}
/** A (u)int32 or (u)int64: a number, or a decimal string; 0 when absent. */
export function num(v: unknown): number {
  if (typeof v === 'number') return Number.isFinite(v) ? v : 0;
  if (typeof v === 'string' && v.trim() !== '') {
    const n = Number(v);
    return Number.isFinite(n) ? n : 0;
  }
  return 0;
}
function bool(v: unknown): boolean {
  return v === true;
}
function arr(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}
function strs(v: unknown): string[] {
  return arr(v).filter((s): s is string => typeof s === 'string');
}
function opt(v: unknown): string | undefined {
  const s = str(v);
  return s === '' ? undefined : s;
}

/** An enum value: its name (the canonical form) or its number, to a name from `names`. */
function enumName(v: unknown, names: readonly string[]): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number') return names[v] ?? '';
  return '';
}

const ERROR_CODES = [
  'UNSPECIFIED', 'BAD_FRAME', 'UNKNOWN_FRAME', 'FRAME_TOO_LARGE', 'UNAUTHENTICATED',
  'TOKEN_INVALID', 'TOKEN_EXPIRED', 'PERMISSION_DENIED', 'INVALID_ID', 'BODY_EMPTY',
  'BODY_TOO_LARGE', 'TOO_MANY_DEVICES', 'ALREADY_AUTHENTICATED', 'INVALID_ARGUMENT',
  'OVERLOADED', 'SHUTTING_DOWN', 'INTERNAL', 'UNAVAILABLE', 'STORAGE_FULL', 'RATE_LIMITED',
  'BLOCKED', 'LIMIT_REACHED', 'UNKNOWN_GROUP', 'NOT_A_MEMBER', 'NOT_AN_ADMIN', 'UNKNOWN_MEDIA',
  'MEDIA_TOO_LARGE', 'MEDIA_MISMATCH', 'MEDIA_TYPE', 'URL_INVALID', 'URL_EXPIRED',
] as const;
const RECEIPT_KINDS = ['unspecified', 'delivered', 'read'] as const;
const GROUP_EVENT_KINDS = [
  'unspecified', 'created', 'added', 'removed', 'left', 'renamed', 'promoted', 'demoted',
] as const;
const TYPING_STATES = ['TYPING_STATE_UNSPECIFIED', 'TYPING_STATE_TYPING', 'TYPING_STATE_STOPPED'] as const;

/** `ERROR_CODE_NOT_A_MEMBER` (or 23) -> `NOT_A_MEMBER`. */
export function errorCode(v: unknown): string {
  const name = enumName(v, ERROR_CODES);
  const code = name.startsWith('ERROR_CODE_') ? name.slice('ERROR_CODE_'.length) : name;
  return code === '' ? 'UNSPECIFIED' : code;
}

/** `RECEIPT_KIND_READ` (or 2) -> `read`. */
export function receiptKind(v: unknown): ReceiptKind {
  const name = enumName(v, RECEIPT_KINDS).replace(/^RECEIPT_KIND_/, '').toLowerCase();
  return (RECEIPT_KINDS as readonly string[]).includes(name) ? (name as ReceiptKind) : 'unspecified';
}

/** `GROUP_EVENT_KIND_ADDED` (or 2) -> `added`. */
export function groupEventKind(v: unknown): GroupEventKind {
  const name = enumName(v, GROUP_EVENT_KINDS).replace(/^GROUP_EVENT_KIND_/, '').toLowerCase();
  return (GROUP_EVENT_KINDS as readonly string[]).includes(name)
    ? (name as GroupEventKind)
    : 'unspecified';
}

export function decodeLimits(v: unknown): Limits {
  const o = obj(v);
  return {
    maxFrameBytes: num(o.maxFrameBytes),
    maxBodyBytes: num(o.maxBodyBytes),
    maxIdBytes: num(o.maxIdBytes),
    maxHistoryPage: num(o.maxHistoryPage),
    maxDevicesPerUser: num(o.maxDevicesPerUser),
    maxInflightSends: num(o.maxInflightSends),
    maxMediaBytes: num(o.maxMediaBytes),
    maxThumbnailBytes: num(o.maxThumbnailBytes),
  };
}

export function decodeWelcome(v: unknown): Welcome {
  const o = obj(v);
  return {
    user: str(o.user),
    device: str(o.device),
    node: str(o.node),
    cursor: num(o.cursor),
    inboxSeq: num(o.inboxSeq),
    limits: decodeLimits(o.limits),
    serverTimeMs: num(o.serverTimeMs),
    readSeq: num(o.readSeq),
  };
}

export function decodeAttachment(v: unknown): Attachment {
  const o = obj(v);
  const a: Attachment = {
    mediaId: str(o.mediaId),
    mime: str(o.mime),
    size: num(o.size),
    sha256: str(o.sha256),
  };
  const thumb = str(o.thumbnail);
  if (thumb !== '') a.thumbnail = fromBase64(thumb);
  const name = opt(o.name);
  if (name !== undefined) a.name = name;
  const node = opt(o.node);
  if (node !== undefined) a.node = node;
  return a;
}

export function decodeMessage(v: unknown): Message {
  const o = obj(v);
  const m: Message = {
    msgId: str(o.msgId),
    from: str(o.from),
    fromDevice: str(o.fromDevice),
    to: str(o.to),
    body: str(o.body),
    ts: num(o.ts),
    clientMsgId: str(o.clientMsgId),
  };
  const group = opt(o.group);
  if (group !== undefined) m.group = group;
  if (o.attachment !== undefined && o.attachment !== null) m.attachment = decodeAttachment(o.attachment);
  return m;
}

export function decodeReceipt(v: unknown): Receipt {
  const o = obj(v);
  return { kind: receiptKind(o.kind), by: str(o.by), msgIds: strs(o.msgIds), ts: num(o.ts) };
}

export function decodeGroupEvent(v: unknown): GroupEvent {
  const o = obj(v);
  return {
    group: str(o.group),
    kind: groupEventKind(o.kind),
    by: str(o.by),
    users: strs(o.users),
    name: str(o.name),
    ts: num(o.ts),
    eventId: str(o.eventId),
  };
}

export function decodeFailed(v: unknown): Failed {
  const o = obj(v);
  return {
    msgId: str(o.msgId),
    to: str(o.to),
    clientMsgId: str(o.clientMsgId),
    reason: str(o.reason),
    ts: num(o.ts),
  };
}

/** A `Deliver` body (a `deliver` frame or a history entry); null for an unknown entry kind. */
export function decodeEntry(v: unknown): Entry | null {
  const o = obj(v);
  const seq = num(o.seq);
  if (o.message !== undefined) return { seq, message: decodeMessage(o.message) };
  if (o.receipt !== undefined) return { seq, receipt: decodeReceipt(o.receipt) };
  if (o.groupEvent !== undefined) return { seq, groupEvent: decodeGroupEvent(o.groupEvent) };
  if (o.failed !== undefined) return { seq, failed: decodeFailed(o.failed) };
  return null;
}

export function decodePresenceStatus(v: unknown): PresenceStatus {
  const o = obj(v);
  return { user: str(o.user), online: bool(o.online), lastSeenMs: num(o.lastSeenMs) };
}

export function decodeGroupInfo(v: unknown): GroupInfo {
  const o = obj(v);
  return {
    group: str(o.group),
    name: str(o.name),
    createdBy: str(o.createdBy),
    createdMs: num(o.createdMs),
    members: arr(o.members).map((m) => {
      const x = obj(m);
      return { user: str(x.user), admin: bool(x.admin), joinedMs: num(x.joinedMs) };
    }),
  };
}

export function decodeGroupReceipts(v: unknown): GroupReceipts {
  const o = obj(v);
  return {
    group: str(o.group),
    msgId: str(o.msgId),
    delivered: num(o.delivered),
    read: num(o.read),
    deliveredBy: strs(o.deliveredBy),
    readBy: strs(o.readBy),
  };
}

export function decodeTypingNotice(v: unknown): TypingNotice {
  const o = obj(v);
  const t: TypingNotice = {
    from: str(o.from),
    fromDevice: str(o.fromDevice),
    typing: enumName(o.state, TYPING_STATES) === 'TYPING_STATE_TYPING',
    expiresInMs: num(o.expiresInMs),
  };
  const group = opt(o.group);
  if (group !== undefined) t.group = group;
  return t;
}

export function decodeMediaReply(v: unknown): MediaReply {
  const o = obj(v);
  return {
    mediaId: str(o.mediaId),
    method: str(o.method),
    url: str(o.url),
    headers: arr(o.headers).map((h) => {
      const x = obj(h);
      return { name: str(x.name), value: str(x.value) };
    }),
    expiresMs: num(o.expiresMs),
  };
}

export function decodeError(v: unknown): WireError {
  const o = obj(v);
  const e: WireError = { code: errorCode(o.code), message: str(o.message) };
  const ref = opt(o.ref);
  if (ref !== undefined) e.ref = ref;
  const retry = num(o.retryAfterMs);
  if (retry > 0) e.retryAfterMs = retry;
  return e;
}

/** One text frame from the node. Throws SyntaxError on text that is not a JSON object. */
export function decodeServerFrame(text: string): ServerFrame {
  const parsed: unknown = JSON.parse(text);
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new SyntaxError('a server frame must be a JSON object');
  }
  const frame = parsed as Json;
  const key = Object.keys(frame)[0] ?? '';
  const v = frame[key];
  const o = obj(v);
  switch (key) {
    case 'welcome':
      return { kind: 'welcome', welcome: decodeWelcome(v) };
    case 'sent':
      return {
        kind: 'sent',
        sent: { clientMsgId: str(o.clientMsgId), msgId: str(o.msgId), ts: num(o.ts) },
      };
    case 'deliver':
      return { kind: 'deliver', seq: num(o.seq), entry: decodeEntry(v) };
    case 'history':
      return {
        kind: 'history',
        requestId: str(o.requestId),
        entries: arr(o.entries)
          .map(decodeEntry)
          .filter((e): e is Entry => e !== null),
        more: bool(o.more),
      };
    case 'pong':
      return { kind: 'pong', nonce: num(o.nonce), serverTimeMs: num(o.serverTimeMs) };
    case 'error':
      return { kind: 'error', error: decodeError(v) };
    case 'redirect':
      return { kind: 'redirect', url: str(o.url), epoch: num(o.epoch) };
    case 'typing':
      return { kind: 'typing', notice: decodeTypingNotice(v) };
    case 'blocked':
      return { kind: 'blocked', requestId: str(o.requestId), users: strs(o.users) };
    case 'presence':
      return {
        kind: 'presence',
        requestId: str(o.requestId),
        statuses: arr(o.statuses).map(decodePresenceStatus),
      };
    case 'presenceUpdate':
      return { kind: 'presenceUpdate', status: decodePresenceStatus(o.status) };
    case 'readState':
      return { kind: 'readState', upToSeq: num(o.upToSeq), device: str(o.device) };
    case 'group': {
      const g: ServerFrame = { kind: 'group', requestId: str(o.requestId) };
      if (o.info !== undefined) g.info = decodeGroupInfo(o.info);
      if (o.groups !== undefined) {
        g.groups = arr(obj(o.groups).groups).map((s) => {
          const x = obj(s);
          return { group: str(x.group), name: str(x.name) };
        });
      }
      if (o.receipts !== undefined) g.receipts = decodeGroupReceipts(o.receipts);
      return g;
    }
    case 'media':
      return { kind: 'media', requestId: str(o.requestId), reply: decodeMediaReply(v) };
    default:
      return { kind: 'unknown', key };
  }
}

// ---- bytes ---------------------------------------------------------------------------------

export function toBase64(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** Standard or URL-safe base64, padded or not; characters outside the alphabet are skipped. */
export function fromBase64(b64: string): Uint8Array {
  let s = b64.replace(/-/g, '+').replace(/_/g, '/').replace(/[^A-Za-z0-9+/]/g, '');
  if (s.length % 4 === 1) s = s.slice(0, -1);
  while (s.length % 4 !== 0) s += '=';
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function hex(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}
