// ChatClient: one device of one user, kept connected (connection.ts), with what it must not
// lose across connections: unanswered sends (outbox.ts), the last processed seq (resume and
// acks), the read marker, the presence watch list, and requests waiting for a connection.

import { Connection } from './connection.js';
import { Emitter } from './emitter.js';
import { ChatError } from './errors.js';
import { isValidId, newClientMsgId, requestIds } from './ids.js';
import { bytesOf, canonicalMime, putUpload } from './media.js';
import { Outbox } from './outbox.js';
import { Requests } from './requests.js';
import { sha256Hex } from './sha256.js';
import type {
  AttachmentIn,
  ClientOptions,
  ConnState,
  Entry,
  Events,
  GroupInfo,
  GroupReceipts,
  PendingSend,
  PresenceStatus,
  SendInput,
  Seq,
  Welcome,
} from './types.js';
import {
  blockCall,
  downloadCall,
  groupInfoCall,
  groupReceiptsCall,
  historyCall,
  leaveCall,
  myGroupsCall,
  presenceCall,
  uploadCall,
  type Call,
} from './calls.js';
import { ackFrame, pingFrame, readFrame, sendFrame, typingFrame, type ClientFrame } from './frames.js';
import type { ServerFrame } from './wire.js';

/** Acks wait this long so that a burst of deliveries (a backlog) is acknowledged by one frame. */
const ACK_DELAY_MS = 20;
/** markActive() sends at most one frame of its own this often. */
const ACTIVE_THROTTLE_MS = 5000;
/** A markActive() not carried by a frame within this long is forgotten (the node's online window). */
const ACTIVE_TTL_MS = 15000;

export class ChatClient {
  welcome?: Welcome;
  /** The highest seq processed (delivered to listeners). */
  lastSeq: Seq;

  private readonly conn: Connection;
  private readonly events = new Emitter<Events>();
  private readonly outbox: Outbox;
  private readonly requests: Requests;
  private readonly nextRequestId = requestIds();
  private readonly autoAck: boolean;
  private readonly fetchFn: typeof fetch | undefined;
  private connecting: Promise<Welcome> | undefined;
  private resolveConnect: ((w: Welcome) => void) | undefined;
  private rejectConnect: ((e: ChatError) => void) | undefined;
  /** Why the client stopped (close(), or a refused fixed token); set once. */
  private stopped: ChatError | undefined;
  /** The highest seq acknowledged on the current connection. */
  private ackSent = 0;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private readWanted = 0;
  /** How far the node knows the user read (welcome.readSeq, then our read frames). */
  private readSent = 0;
  private watchList: string[] = [];
  private activeSince: number | undefined;
  private lastActiveAt = -Infinity;
  private nonce = 0;

  constructor(opts: ClientOptions) {
    if (opts.router === undefined && opts.url === undefined) {
      throw new TypeError('ChatClient: set options.router or options.url');
    }
    const g = globalThis as { WebSocket?: typeof WebSocket; fetch?: typeof fetch };
    this.fetchFn = opts.fetch ?? (g.fetch ? g.fetch.bind(globalThis) : undefined);
    this.autoAck = opts.autoAck ?? true;
    this.lastSeq = Math.max(0, opts.resumeAfter ?? 0);
    const timeoutMs = opts.requestTimeoutMs ?? 15000;
    const maxMs = opts.backoff?.maxMs ?? 10000;
    const write = (f: ClientFrame): boolean => this.write(f);
    this.outbox = new Outbox(write, maxMs);
    this.requests = new Requests(write, timeoutMs);
    this.conn = new Connection(
      {
        router: opts.router,
        url: opts.url,
        token: opts.token,
        agent: opts.agent,
        initialMs: opts.backoff?.initialMs ?? 250,
        maxMs,
        connectTimeoutMs: timeoutMs,
        WebSocket: opts.WebSocket ?? g.WebSocket,
        fetch: this.fetchFn,
      },
      {
        resumeAfter: () => this.lastSeq,
        open: (w) => this.onOpen(w),
        frame: (f) => this.onFrame(f),
        down: () => this.onDown(),
        state: (s) => this.events.emit('state', s),
        error: (e) => this.events.emit('error', e),
        redirect: (r) => this.events.emit('redirect', r),
        stopped: (e) => this.stop(e),
      },
    );
  }

  /** The user id: the token's `sub` claim ('' until a token function has given a token). */
  get user(): string {
    return this.conn.user;
  }

  get state(): ConnState {
    return this.conn.state;
  }

  /** Starts connecting; resolves at the first welcome. Reconnects after that until close(). */
  connect(): Promise<Welcome> {
    if (this.stopped) return Promise.reject(this.stopped);
    if (!this.connecting) {
      this.connecting = new Promise<Welcome>((resolve, reject) => {
        this.resolveConnect = resolve;
        this.rejectConnect = reject;
      });
      this.connecting.catch(() => undefined);
      this.conn.start();
    }
    return this.connecting;
  }

  /** Stops for good: no more reconnects; what is pending is rejected with 'CLOSED'. */
  close(): void {
    this.stop(new ChatError('CLOSED', 'the client was closed'));
  }

  on<K extends keyof Events>(ev: K, fn: (arg: Events[K]) => void): () => void {
    return this.events.on(ev, fn);
  }

  /** Sends a message: now if connected, else on connection; again on every reconnection until ✓. */
  send(m: SendInput): PendingSend {
    const clientMsgId = m.clientMsgId ?? newClientMsgId();
    const refuse = (e: ChatError): PendingSend => {
      const sent = Promise.reject(e);
      sent.catch(() => undefined);
      return { clientMsgId, sent };
    };
    if (this.stopped) return refuse(this.errorFor(this.stopped, clientMsgId));
    if (!isValidId(clientMsgId)) {
      return refuse(new ChatError('INVALID_ID', `clientMsgId ${JSON.stringify(clientMsgId)} is not a valid id`, { ref: clientMsgId }));
    }
    return this.outbox.add(
      clientMsgId,
      sendFrame({ clientMsgId, to: m.to, group: m.group, body: m.body, attachment: m.attachment }),
      m.group !== undefined ? `group:${m.group}` : `user:${m.to ?? ''}`,
    );
  }

  /** Marks everything up to `upToSeq` read (kept, and sent after a reconnection if the node lacks it). */
  read(upToSeq: Seq): void {
    if (!(upToSeq > this.readWanted)) return;
    this.readWanted = upToSeq;
    this.writeRead();
  }

  /** Tells the peer (or the group) that this user is typing, or stopped. Dropped when not connected. */
  typing(target: { to?: string; group?: string }, typing: boolean): void {
    this.write(typingFrame(target, typing));
  }

  /** The user did something: the next frame carries `active` (or a ping does; at most once per 5 s). */
  markActive(): void {
    const now = Date.now();
    if (now - this.lastActiveAt < ACTIVE_THROTTLE_MS) return;
    if (this.activeSince !== undefined && now - this.activeSince <= ACTIVE_TTL_MS) return;
    this.activeSince = now;
    queueMicrotask(() => {
      if (this.activeSince !== undefined && this.conn.isOpen) this.write(pingFrame(++this.nonce));
    });
  }

  /** A page of the inbox, newest first, from before `beforeSeq` (default: the newest). */
  history(opts: { beforeSeq?: Seq; limit?: number } = {}): Promise<{ entries: Entry[]; more: boolean }> {
    return this.call(historyCall(opts.beforeSeq, opts.limit));
  }

  /** Watches these users (replacing the list; [] stops): their status now, then 'presence' events. Kept across reconnections. */
  presenceWatch(users: string[]): Promise<PresenceStatus[]> {
    this.watchList = [...users];
    return this.watch(true);
  }

  presenceQuery(users: string[]): Promise<PresenceStatus[]> {
    return this.call(presenceCall('query', users));
  }

  createGroup(name: string, members: string[]): Promise<GroupInfo> {
    return this.call(groupInfoCall('create', { name, members }));
  }

  addMembers(group: string, users: string[]): Promise<GroupInfo> {
    return this.call(groupInfoCall('add', { group, users }));
  }

  removeMembers(group: string, users: string[]): Promise<GroupInfo> {
    return this.call(groupInfoCall('remove', { group, users }));
  }

  renameGroup(group: string, name: string): Promise<GroupInfo> {
    return this.call(groupInfoCall('rename', { group, name }));
  }

  leaveGroup(group: string): Promise<void> {
    return this.call(leaveCall(group));
  }

  groupInfo(group: string): Promise<GroupInfo> {
    return this.call(groupInfoCall('info', { group }));
  }

  myGroups(): Promise<{ group: string; name: string }[]> {
    return this.call(myGroupsCall());
  }

  /** How many members received and read a group message, and who. */
  groupReceipts(group: string, msgId: string): Promise<GroupReceipts> {
    return this.call(groupReceiptsCall(group, msgId));
  }

  /** Blocks a user; resolves with every user this user has blocked. */
  block(user: string): Promise<string[]> {
    return this.call(blockCall({ block: user }));
  }

  unblock(user: string): Promise<string[]> {
    return this.call(blockCall({ unblock: user }));
  }

  /**
   * Uploads a file: asks the node for an upload slot (type, size, SHA-256), then PUTs the bytes
   * to the signed URL with exactly the headers given. Resolves with the attachment to `send`.
   */
  async uploadFile(
    data: Blob | Uint8Array,
    mime: string,
    opts: { name?: string; thumbnail?: Uint8Array } = {},
  ): Promise<AttachmentIn> {
    const bytes = await bytesOf(data);
    const sha256 = await sha256Hex(bytes);
    const reply = await this.call(uploadCall(mime, bytes.length, sha256));
    if (!this.fetchFn) throw new ChatError('CONFIG', 'no fetch function (pass options.fetch)');
    await putUpload(this.fetchFn, reply, bytes);
    const a: AttachmentIn = { mediaId: reply.mediaId, mime: canonicalMime(mime), size: bytes.length, sha256 };
    if (opts.name !== undefined) a.name = opts.name;
    if (opts.thumbnail !== undefined) a.thumbnail = opts.thumbnail;
    return a;
  }

  /** A short-lived GET URL for a file: `seq` is the message's inbox entry (0: a file this user uploaded). */
  async downloadUrl(mediaId: string, seq: Seq): Promise<string> {
    return (await this.call(downloadCall(mediaId, seq))).url;
  }

  // ---- connection events -----------------------------------------------------------------

  private onOpen(w: Welcome): void {
    this.welcome = w;
    this.ackSent = w.cursor;
    this.readSent = w.readSeq;
    // Re-assert what this device processed and read (an ack or read that reached a node just
    // before it went away may not have been applied), then everything unanswered, in order.
    if (this.autoAck && this.lastSeq > this.ackSent) this.flushAck();
    this.writeRead();
    this.outbox.writeAll();
    this.requests.writeWaiting();
    if (this.watchList.length > 0 && !this.requests.hasKept()) this.watch(false).catch(() => undefined);
    if (this.activeSince !== undefined && Date.now() - this.activeSince <= ACTIVE_TTL_MS) {
      this.write(pingFrame(++this.nonce));
    }
    this.events.emit('state', 'open');
    this.events.emit('welcome', w);
    this.resolveConnect?.(w);
  }

  private onDown(): void {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.outbox.pause();
    this.requests.disconnected();
  }

  private onFrame(f: ServerFrame): void {
    switch (f.kind) {
      case 'sent':
        if (this.outbox.answered(f.sent)) this.events.emit('sent', f.sent);
        return;
      case 'deliver':
        this.onDeliver(f.seq, f.entry);
        return;
      case 'error':
        if (f.error.ref !== undefined && this.outbox.has(f.error.ref)) this.outbox.refused(f.error);
        else if (!this.requests.refused(f.error)) {
          this.events.emit('error', new ChatError(f.error.code, f.error.message, { ...(f.error.ref ? { ref: f.error.ref } : {}) }));
        }
        return;
      case 'history':
      case 'blocked':
      case 'presence':
      case 'group':
      case 'media':
        this.requests.answer(f.requestId, f);
        return;
      case 'typing':
        this.events.emit('typing', f.notice);
        return;
      case 'presenceUpdate':
        this.events.emit('presence', f.status);
        return;
      case 'readState':
        this.events.emit('readState', { upToSeq: f.upToSeq, device: f.device });
        return;
      default:
        return; // pong, and kinds this library does not know
    }
  }

  private onDeliver(seq: Seq, entry: Entry | null): void {
    // A repeat after a resume: processed already.
    if (seq <= this.lastSeq) return;
    this.lastSeq = seq;
    if (entry?.message) this.events.emit('message', { seq, message: entry.message });
    else if (entry?.receipt) this.events.emit('receipt', { seq, receipt: entry.receipt });
    else if (entry?.groupEvent) this.events.emit('groupEvent', { seq, event: entry.groupEvent });
    else if (entry?.failed) this.events.emit('failed', { seq, failed: entry.failed });
    if (this.autoAck && this.ackTimer === undefined) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = undefined;
        this.flushAck();
      }, ACK_DELAY_MS);
    }
  }

  private stop(err: ChatError): void {
    if (this.stopped) return;
    this.stopped = err;
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.activeSince = undefined;
    this.conn.stop();
    this.requests.rejectAll((ref) => this.errorFor(err, ref));
    this.outbox.rejectAll((ref) => this.errorFor(err, ref));
    this.rejectConnect?.(err);
  }

  // ---- writing ----------------------------------------------------------------------------

  /** Writes a frame on the welcomed connection (with `active` if the user did something). */
  private write(f: ClientFrame): boolean {
    const now = Date.now();
    let frame = f;
    const carry = this.activeSince !== undefined && now - this.activeSince <= ACTIVE_TTL_MS;
    if (carry) frame = { ...f, active: true };
    if (!this.conn.send(frame)) return false;
    if (this.activeSince !== undefined) this.activeSince = undefined;
    if (carry || 'send' in f || 'typing' in f || 'read' in f) this.lastActiveAt = now;
    return true;
  }

  private flushAck(): void {
    if (this.lastSeq > this.ackSent && this.write(ackFrame(this.lastSeq))) this.ackSent = this.lastSeq;
  }

  private writeRead(): void {
    if (this.readWanted > this.readSent && this.write(readFrame(this.readWanted))) {
      this.readSent = this.readWanted;
    }
  }

  // ---- requests ---------------------------------------------------------------------------

  private call<T>(c: Call<T>, keep = false): Promise<T> {
    const id = this.nextRequestId();
    if (this.stopped) return Promise.reject(this.errorFor(this.stopped, id));
    return this.requests.add(id, c.frame(id), c.read, keep);
  }

  /** Sends the watch list; `keep`: the caller's request, written again after a reconnection. */
  private watch(keep: boolean): Promise<PresenceStatus[]> {
    const c = presenceCall('watch', this.watchList);
    const read = (f: ServerFrame): PresenceStatus[] => {
      const statuses = c.read(f);
      for (const s of statuses) this.events.emit('presence', s);
      return statuses;
    };
    return this.call({ frame: c.frame, read }, keep);
  }

  /** The stop reason, for one request or send. */
  private errorFor(err: ChatError, ref: string): ChatError {
    const e = new ChatError(err.code, undefined, { ref });
    e.message = err.message;
    if (err.retryAfterMs !== undefined) e.retryAfterMs = err.retryAfterMs;
    return e;
  }
}
