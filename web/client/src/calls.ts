// Every request the client makes: the frame it writes (given its requestId) and how the answer
// with that requestId is read. A frame of another kind than expected is a 'PROTOCOL' error.

import { ChatError } from './errors.js';
import {
  blockFrame,
  groupFrame,
  historyFrame,
  mediaDownloadFrame,
  mediaUploadFrame,
  presenceFrame,
  type ClientFrame,
} from './frames.js';
import type { Entry, GroupInfo, GroupReceipts, GroupSummary, MediaReply, PresenceStatus, Seq } from './types.js';
import type { ServerFrame } from './wire.js';

export interface Call<T> {
  frame(requestId: string): ClientFrame;
  read(answer: ServerFrame): T;
}

type Kind = ServerFrame['kind'];

function expect<K extends Kind>(f: ServerFrame, kind: K, has?: string): Extract<ServerFrame, { kind: K }> {
  if (f.kind !== kind || (has !== undefined && !(has in f))) {
    throw new ChatError('PROTOCOL', `expected a ${kind}${has ? ` ${has}` : ''} answer, got ${f.kind}`);
  }
  return f as Extract<ServerFrame, { kind: K }>;
}

export function historyCall(beforeSeq?: Seq, limit?: number): Call<{ entries: Entry[]; more: boolean }> {
  return {
    frame: (id) => historyFrame(id, beforeSeq, limit),
    read: (f) => {
      const h = expect(f, 'history');
      return { entries: h.entries, more: h.more };
    },
  };
}

export function presenceCall(op: 'query' | 'watch', users: string[]): Call<PresenceStatus[]> {
  return { frame: (id) => presenceFrame(id, op, users), read: (f) => expect(f, 'presence').statuses };
}

/** create, add, remove, rename, info: answered with the group's info after the change. */
export function groupInfoCall(op: string, body: Record<string, unknown>): Call<GroupInfo> {
  return { frame: (id) => groupFrame(id, op, body), read: (f) => expect(f, 'group', 'info').info! };
}

export function leaveCall(group: string): Call<void> {
  return {
    frame: (id) => groupFrame(id, 'leave', { group }),
    read: (f) => {
      expect(f, 'group');
    },
  };
}

export function myGroupsCall(): Call<GroupSummary[]> {
  return { frame: (id) => groupFrame(id, 'mine', true), read: (f) => expect(f, 'group').groups ?? [] };
}

export function groupReceiptsCall(group: string, msgId: string): Call<GroupReceipts> {
  return {
    frame: (id) => groupFrame(id, 'receipts', { group, msgId, who: true }),
    read: (f) => expect(f, 'group', 'receipts').receipts!,
  };
}

export function blockCall(op: { block: string } | { unblock: string }): Call<string[]> {
  return { frame: (id) => blockFrame(id, op), read: (f) => expect(f, 'blocked').users };
}

export function uploadCall(mime: string, size: number, sha256: string): Call<MediaReply> {
  return { frame: (id) => mediaUploadFrame(id, mime, size, sha256), read: (f) => expect(f, 'media').reply };
}

export function downloadCall(mediaId: string, seq: Seq): Call<MediaReply> {
  return { frame: (id) => mediaDownloadFrame(id, mediaId, seq), read: (f) => expect(f, 'media').reply };
}
