// Sends not yet answered, in the order they were made. Every one is written on each new
// connection with its clientMsgId (the node stores a message once however often it is sent),
// until `sent` (✓) or a definitive refusal. A retryable refusal writes it again after the
// node's retryAfterMs on the same connection, never before an earlier refused send of the same
// conversation: two sends the node had both stored would otherwise get their ✓ in retry order.

import { ChatError, RETRYABLE_SEND_CODES, retryHint } from './errors.js';
import type { PendingSend, Sent } from './types.js';
import type { ClientFrame } from './frames.js';
import type { WireError } from './wire.js';

interface Item {
  clientMsgId: string;
  frame: ClientFrame;
  sent: Promise<Sent>;
  resolve: (s: Sent) => void;
  reject: (e: ChatError) => void;
  /** The user or group it goes to: refused sends of one conversation are retried in order. */
  conversation: string;
  /** Its retry time has come; it waits for an earlier refused send of its conversation. */
  due: boolean;
  /** Retryable refusals in a row. */
  refusals: number;
  retry: ReturnType<typeof setTimeout> | undefined;
}

export class Outbox {
  private items = new Map<string, Item>();

  constructor(
    /** Writes a frame on the welcomed connection; false when there is none. */
    private readonly write: (f: ClientFrame) => boolean,
    private readonly maxRetryMs: number,
  ) {}

  get size(): number {
    return this.items.size;
  }

  has(clientMsgId: string): boolean {
    return this.items.has(clientMsgId);
  }

  /** Queues a send and writes it if a connection is up. A clientMsgId already queued gives the same promise. */
  add(clientMsgId: string, frame: ClientFrame, conversation: string): PendingSend {
    const old = this.items.get(clientMsgId);
    if (old) return { clientMsgId, sent: old.sent };
    let resolve!: (s: Sent) => void;
    let reject!: (e: ChatError) => void;
    const sent = new Promise<Sent>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // An app may follow sends through the 'sent' event only: no unhandled rejections.
    sent.catch(() => undefined);
    this.items.set(clientMsgId, {
      clientMsgId,
      frame,
      sent,
      resolve,
      reject,
      conversation,
      due: false,
      refusals: 0,
      retry: undefined,
    });
    this.write(frame);
    return { clientMsgId, sent };
  }

  /** A new connection: every unanswered send again, oldest first. */
  writeAll(): void {
    for (const item of this.items.values()) {
      clearTimeout(item.retry);
      item.retry = undefined;
      item.due = false;
      if (!this.write(item.frame)) return;
    }
  }

  /** The connection ended: retries wait for the next one (which writes everything again). */
  pause(): void {
    for (const item of this.items.values()) {
      clearTimeout(item.retry);
      item.retry = undefined;
      item.due = false;
    }
  }

  /** ✓: true if it answered a queued send. */
  answered(s: Sent): boolean {
    const item = this.items.get(s.clientMsgId);
    if (!item) return false;
    clearTimeout(item.retry);
    this.items.delete(s.clientMsgId);
    item.resolve(s);
    this.writeDue();
    return true;
  }

  /**
   * An error whose ref is a queued send: a retryable one writes it again after retryAfterMs (1 s
   * by default, doubling while no hint comes, at most maxRetryMs); another rejects it.
   */
  refused(e: WireError): void {
    const item = e.ref === undefined ? undefined : this.items.get(e.ref);
    if (!item) return;
    if (RETRYABLE_SEND_CODES.has(e.code)) {
      item.refusals++;
      const delay =
        e.retryAfterMs ?? Math.min(this.maxRetryMs, 1000 * 2 ** Math.min(item.refusals - 1, 20));
      clearTimeout(item.retry);
      item.due = false;
      item.retry = setTimeout(() => {
        item.retry = undefined;
        item.due = true;
        this.writeDue();
      }, delay);
      return;
    }
    this.items.delete(item.clientMsgId);
    item.reject(new ChatError(e.code, e.message, { ref: item.clientMsgId, ...retryHint(e) }));
    this.writeDue();
  }

  /** Writes the refused sends whose retry is due, oldest first, each after its conversation's earlier refused sends. */
  private writeDue(): void {
    const waiting = new Set<string>();
    for (const item of this.items.values()) {
      if (item.due && !waiting.has(item.conversation)) {
        item.due = false;
        this.write(item.frame);
      } else if (item.due || item.retry !== undefined) {
        waiting.add(item.conversation);
      }
    }
  }

  /** Gives up every send (close(), or the client stopped): `error` makes each one's error. */
  rejectAll(error: (ref: string) => ChatError): void {
    const items = [...this.items.values()];
    this.items.clear();
    for (const item of items) {
      clearTimeout(item.retry);
      item.reject(error(item.clientMsgId));
    }
  }
}
