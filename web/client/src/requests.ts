// Requests answered by a frame with the same requestId (history, presence, group, block,
// media), or refused by an error whose ref is it. Each has a deadline from the moment it is
// made; one made while no connection is up waits for the next (within that deadline).

import { ChatError, retryHint } from './errors.js';
import type { ClientFrame } from './frames.js';
import type { ServerFrame, WireError } from './wire.js';

interface Pending {
  id: string;
  frame: ClientFrame;
  /** Reads the answer (throws a ChatError if it is not the expected kind). */
  answer: (f: ServerFrame) => void;
  reject: (e: ChatError) => void;
  timer: ReturnType<typeof setTimeout>;
  written: boolean;
  /** Written again on the next connection instead of failing with DISCONNECTED. */
  keep: boolean;
}

export class Requests {
  private pending = new Map<string, Pending>();

  constructor(
    private readonly write: (f: ClientFrame) => boolean,
    private readonly timeoutMs: number,
  ) {}

  has(id: string): boolean {
    return this.pending.has(id);
  }

  /** Any request with `keep` not answered yet. */
  hasKept(): boolean {
    for (const p of this.pending.values()) if (p.keep) return true;
    return false;
  }

  /** Sends a request (now if a connection is up, else on the next); `read` turns the answer into the result. */
  add<T>(id: string, frame: ClientFrame, read: (f: ServerFrame) => T, keep = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.get(id) !== p) return;
        this.pending.delete(id);
        reject(new ChatError('TIMEOUT', `no answer within ${this.timeoutMs} ms`, { ref: id }));
      }, this.timeoutMs);
      const p: Pending = {
        id,
        frame,
        answer: (f) => {
          try {
            resolve(read(f));
          } catch (e) {
            reject(e instanceof ChatError ? e : new ChatError('PROTOCOL', String(e), { ref: id }));
          }
        },
        reject,
        timer,
        written: false,
        keep,
      };
      this.pending.set(id, p);
      p.written = this.write(frame);
    });
  }

  /** An answer frame: true if it was for a pending request. */
  answer(id: string, f: ServerFrame): boolean {
    const p = this.pending.get(id);
    if (!p) return false;
    this.pending.delete(id);
    clearTimeout(p.timer);
    p.answer(f);
    return true;
  }

  /** An error whose ref names a pending request: true if it did. */
  refused(e: WireError): boolean {
    const p = e.ref === undefined ? undefined : this.pending.get(e.ref);
    if (!p) return false;
    this.pending.delete(p.id);
    clearTimeout(p.timer);
    p.reject(new ChatError(e.code, e.message, { ref: p.id, ...retryHint(e) }));
    return true;
  }

  /** A new connection: writes the requests that wait for one, oldest first. */
  writeWaiting(): void {
    for (const p of this.pending.values()) {
      if (p.written) continue;
      if (!this.write(p.frame)) return;
      p.written = true;
    }
  }

  /** The connection ended: what was written will never be answered. */
  disconnected(): void {
    for (const p of [...this.pending.values()]) {
      if (!p.written) continue;
      if (p.keep) {
        p.written = false;
        continue;
      }
      this.pending.delete(p.id);
      clearTimeout(p.timer);
      p.reject(new ChatError('DISCONNECTED', 'the connection ended before the answer', { ref: p.id }));
    }
  }

  rejectAll(error: (ref: string) => ChatError): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
      clearTimeout(p.timer);
      p.reject(error(p.id));
    }
  }
}
