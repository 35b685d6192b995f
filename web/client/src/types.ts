// The library's public data types: the protocol's frames as an app sees them (64-bit integers
// as numbers, enums as short lowercase names, bytes as Uint8Array). `wire.ts` converts.

import type { ChatError } from './errors.js';

/** An inbox sequence number (a uint64 on the wire, parsed to a number). */
export type Seq = number;

export interface ClientOptions {
  /**
   * http(s) base URL of a router: before every connection attempt the user's home node is
   * looked up with `GET {router}/v1/route/{user}`.
   */
  router?: string;
  /** Or a node's ws(s) URL, used directly (`redirect` frames are still followed). */
  url?: string;
  /**
   * The user's JWT, or a function giving one. A function is called at construction, and again
   * after the node refused the token (TOKEN_INVALID, TOKEN_EXPIRED, TOO_MANY_DEVICES) or when
   * the token's `exp` has passed. The user id is the token's `sub` claim.
   */
  token: string | (() => string | Promise<string>);
  /** `hello.agent`: a free-form client name for the node's logs. */
  agent?: string;
  /** The highest seq this device already processed (e.g. kept in localStorage). */
  resumeAfter?: Seq;
  /** Acknowledge every delivered entry (cumulatively, batched). Default true. */
  autoAck?: boolean;
  /** Reconnection backoff (full jitter): default 250 ms doubling up to 10 000 ms. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** How long a request (and a connection attempt up to `welcome`) may take. Default 15 000. */
  requestTimeoutMs?: number;
  /** The WebSocket class (default: the global one). */
  WebSocket?: typeof WebSocket;
  /** The fetch function (default: the global one). */
  fetch?: typeof fetch;
}

export type ConnState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** What this node enforces (`welcome.limits`). */
export interface Limits {
  maxFrameBytes: number;
  maxBodyBytes: number;
  maxIdBytes: number;
  maxHistoryPage: number;
  maxDevicesPerUser: number;
  maxInflightSends: number;
  /** The largest upload slot; 0 when the node takes no media. */
  maxMediaBytes: number;
  maxThumbnailBytes: number;
}

export interface Welcome {
  user: string;
  device: string;
  node: string;
  /** This device's durable cursor (the highest seq it acknowledged). */
  cursor: Seq;
  /** The newest seq in the inbox when the connection was made. */
  inboxSeq: Seq;
  limits: Limits;
  serverTimeMs: number;
  /** How far the user has read, on any device. */
  readSeq: Seq;
}

/** A file attached to a received message. */
export interface Attachment {
  mediaId: string;
  mime: string;
  size: number;
  /** 64 hex digits. */
  sha256: string;
  thumbnail?: Uint8Array;
  name?: string;
  /** With the embedded blob store: the node holding the bytes. */
  node?: string;
}

/** An attachment to send: the upload slot's `mediaId`, the rest optional (the node fills it). */
export interface AttachmentIn {
  mediaId: string;
  mime?: string;
  size?: number;
  sha256?: string;
  /** A small preview, at most `limits.maxThumbnailBytes` (base64 on the wire). */
  thumbnail?: Uint8Array;
  name?: string;
}

export interface Message {
  msgId: string;
  from: string;
  fromDevice: string;
  /** The recipient (the group's id for a group message). */
  to: string;
  body: string;
  /** The sender's node's acceptance time, ms since the Unix epoch. */
  ts: number;
  clientMsgId: string;
  group?: string;
  attachment?: Attachment;
}

export type ReceiptKind = 'delivered' | 'read' | 'unspecified';

export interface Receipt {
  kind: ReceiptKind;
  by: string;
  msgIds: string[];
  ts: number;
}

export type GroupEventKind =
  | 'created'
  | 'added'
  | 'removed'
  | 'left'
  | 'renamed'
  | 'promoted'
  | 'demoted'
  | 'unspecified';

export interface GroupEvent {
  group: string;
  kind: GroupEventKind;
  by: string;
  users: string[];
  /** The group's name after the change. */
  name: string;
  ts: number;
  eventId: string;
}

/** A message that got ✓ but could never reach its recipient's node. */
export interface Failed {
  msgId: string;
  to: string;
  clientMsgId: string;
  reason: string;
  ts: number;
}

/** ✓: the message is stored. */
export interface Sent {
  clientMsgId: string;
  msgId: string;
  ts: number;
}

/** An inbox entry (a delivery or a history item): its seq and exactly one of the four kinds. */
export type Entry =
  | { seq: Seq; message: Message; receipt?: never; groupEvent?: never; failed?: never }
  | { seq: Seq; receipt: Receipt; message?: never; groupEvent?: never; failed?: never }
  | { seq: Seq; groupEvent: GroupEvent; message?: never; receipt?: never; failed?: never }
  | { seq: Seq; failed: Failed; message?: never; receipt?: never; groupEvent?: never };

export interface TypingNotice {
  from: string;
  fromDevice: string;
  group?: string;
  /** true: typing; false: stopped. */
  typing: boolean;
  /** Show it at most this long unless renewed. */
  expiresInMs: number;
}

export interface PresenceStatus {
  user: string;
  online: boolean;
  /** ms since the Unix epoch; 0 when unknown or hidden. */
  lastSeenMs: number;
}

export interface GroupMember {
  user: string;
  admin: boolean;
  joinedMs: number;
}

export interface GroupInfo {
  group: string;
  name: string;
  createdBy: string;
  createdMs: number;
  members: GroupMember[];
}

export interface GroupSummary {
  group: string;
  name: string;
}

export interface GroupReceipts {
  group: string;
  msgId: string;
  /** Counts over the members other than the sender (a read counts as delivered too). */
  delivered: number;
  read: number;
  deliveredBy: string[];
  readBy: string[];
}

export interface HttpHeader {
  name: string;
  value: string;
}

/** A signed media URL (`media` answer). */
export interface MediaReply {
  mediaId: string;
  method: string;
  url: string;
  headers: HttpHeader[];
  expiresMs: number;
}

/** What `send` takes. Exactly one of `to` and `group`. */
export interface SendInput {
  to?: string;
  group?: string;
  body?: string;
  attachment?: AttachmentIn;
  /** The idempotency key; a unique id by default. `[A-Za-z0-9-_.:@+=/]`, at most 64 bytes. */
  clientMsgId?: string;
}

export interface PendingSend {
  clientMsgId: string;
  /** Resolves at ✓; rejects with a ChatError on a definitive refusal or `close()`. */
  sent: Promise<Sent>;
}

/** Everything a ChatClient reports; see `ChatClient.on`. */
export interface Events {
  state: ConnState;
  welcome: Welcome;
  /** Includes this user's own messages sent from its other devices (`from` === user). */
  message: { seq: Seq; message: Message };
  receipt: { seq: Seq; receipt: Receipt };
  groupEvent: { seq: Seq; event: GroupEvent };
  failed: { seq: Seq; failed: Failed };
  sent: Sent & { clientMsgId: string };
  typing: TypingNotice;
  /** From `presenceUpdate` frames and from the answers to `presenceWatch`. */
  presence: PresenceStatus;
  readState: { upToSeq: Seq; device: string };
  /** Errors not tied to a pending request or send. */
  error: ChatError;
  redirect: { url: string; epoch: number };
}
