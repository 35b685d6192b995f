// Client frames in the canonical proto3 JSON (the counterpart of wire.ts): 64-bit integers as
// strings, enums by name, bytes as base64, and fields holding their default left out, since
// the node refuses unknown fields and nothing extra may be sent. Pure functions.

import type { AttachmentIn, Seq } from './types.js';
import { toBase64 } from './wire.js';

type Json = Record<string, unknown>;

/** A client frame: one kind as its only key, and `active` when the user did something. */
export type ClientFrame = Json & { active?: true };

/** A uint64 as the canonical JSON string. */
export function u64(n: number): string {
  return BigInt(Math.max(0, Math.trunc(n))).toString();
}

/** `o` without the fields that hold their default (proto3 JSON omits them). */
function compact(o: Json): Json {
  const out: Json = {};
  for (const [k, v] of Object.entries(o)) {
    if (v === undefined || v === '' || v === false || v === 0 || v === '0') continue;
    if (Array.isArray(v) && v.length === 0) continue;
    out[k] = v;
  }
  return out;
}

export function helloFrame(token: string, agent: string | undefined, resumeAfter: Seq): ClientFrame {
  return {
    hello: compact({ token, agent, resumeAfter: resumeAfter > 0 ? u64(resumeAfter) : undefined }),
  };
}

export function encodeAttachment(a: AttachmentIn): Json {
  return compact({
    mediaId: a.mediaId,
    mime: a.mime,
    size: a.size ? u64(a.size) : undefined,
    sha256: a.sha256,
    thumbnail: a.thumbnail && a.thumbnail.length > 0 ? toBase64(a.thumbnail) : undefined,
    name: a.name,
  });
}

export function sendFrame(m: {
  clientMsgId: string;
  to?: string | undefined;
  group?: string | undefined;
  body?: string | undefined;
  attachment?: AttachmentIn | undefined;
}): ClientFrame {
  return {
    send: compact({
      clientMsgId: m.clientMsgId,
      to: m.to,
      body: m.body,
      group: m.group,
      attachment: m.attachment ? encodeAttachment(m.attachment) : undefined,
    }),
  };
}

export function ackFrame(upToSeq: Seq): ClientFrame {
  return { ack: { upToSeq: u64(upToSeq) } };
}

export function readFrame(upToSeq: Seq): ClientFrame {
  return { read: { upToSeq: u64(upToSeq) } };
}

export function pingFrame(nonce: number): ClientFrame {
  return { ping: compact({ nonce: u64(nonce) }) };
}

export function typingFrame(target: { to?: string; group?: string }, typing: boolean): ClientFrame {
  return {
    typing: compact({
      to: target.to,
      state: typing ? 'TYPING_STATE_TYPING' : 'TYPING_STATE_STOPPED',
      group: target.group,
    }),
  };
}

export function historyFrame(requestId: string, beforeSeq?: Seq, limit?: number): ClientFrame {
  return {
    history: compact({
      beforeSeq: beforeSeq ? u64(beforeSeq) : undefined,
      limit: limit ? Math.trunc(limit) : undefined,
      requestId,
    }),
  };
}

export function presenceFrame(requestId: string, op: 'query' | 'watch', users: string[]): ClientFrame {
  // An empty watch list stops watching: the op must still be there, as `{}`.
  return { presence: { requestId, [op]: compact({ users }) } };
}

/** A `group` request: `op` is the oneof's field (create, rename, add, remove, leave, info, mine, receipts). */
export function groupFrame(requestId: string, op: string, body: Json | true): ClientFrame {
  return { group: { requestId, [op]: body === true ? true : compact(body) } };
}

export function blockFrame(
  requestId: string,
  op: { block: string } | { unblock: string } | { list: true },
): ClientFrame {
  return { block: { requestId, ...op } };
}

export function mediaUploadFrame(requestId: string, mime: string, size: number, sha256: string): ClientFrame {
  return { media: { requestId, upload: compact({ mime, size: u64(size), sha256 }) } };
}

export function mediaDownloadFrame(requestId: string, mediaId: string, seq: Seq): ClientFrame {
  return { media: { requestId, download: compact({ mediaId, seq: seq > 0 ? u64(seq) : undefined }) } };
}
