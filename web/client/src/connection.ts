// One WebSocket at a time to the user's home node, and the reconnection loop around it: the
// token, the route lookup, hello, redirects, backoff. What a connection carries once welcomed is
// the client's business (client.ts); this file only reports frames and changes through hooks.

import { ChatError, TOKEN_CODES, retryHint } from './errors.js';
import type { ConnState, Seq, Welcome } from './types.js';
import { helloFrame, type ClientFrame } from './frames.js';
import { tokenClaims } from './ids.js';
import { decodeServerFrame, type ServerFrame, type WireError } from './wire.js';

/** Redirect frames followed in a row before backing off and asking the router again. */
export const MAX_HOPS = 4;
/** A connection that stayed welcomed this long resets the backoff when it ends. */
const STABLE_MS = 5000;
/** Errors after welcome that end the connection; their retryAfterMs delays the next one. */
const CONNECTION_ENDING: ReadonlySet<string> = new Set(['SHUTTING_DOWN', 'UNAVAILABLE', 'OVERLOADED']);
/** WebSocket.OPEN (an injected class may not carry the constants). */
const WS_OPEN = 1;

export interface ConnectionOptions {
  router?: string | undefined;
  url?: string | undefined;
  token: string | (() => string | Promise<string>);
  agent?: string | undefined;
  initialMs: number;
  maxMs: number;
  /** Up to `welcome`, per WebSocket. */
  connectTimeoutMs: number;
  WebSocket: typeof WebSocket | undefined;
  fetch: typeof fetch | undefined;
}

export interface ConnectionHooks {
  /** The seq to resume after (`hello.resumeAfter`). */
  resumeAfter(): Seq;
  /** `welcome` arrived; `state` is 'open' already (its event is not yet emitted). */
  open(w: Welcome): void;
  /** Any frame after `welcome`, except connection-level errors (no ref). */
  frame(f: ServerFrame): void;
  /** A welcomed connection ended. */
  down(): void;
  state(s: ConnState): void;
  /** An error not tied to a request: a node's error frame without ref, a refused route lookup. */
  error(e: ChatError): void;
  redirect(r: { url: string; epoch: number }): void;
  /** Given up for good (a fixed token was refused); `state` is 'closed'. */
  stopped(e: ChatError): void;
}

export class Connection {
  state: ConnState = 'idle';
  private ws: WebSocket | undefined;
  /** Bumped by every attempt and by stop(): callbacks of older ones do nothing. */
  private gen = 0;
  private welcomed = false;
  private everOpen = false;
  private openedAt = 0;
  private failures = 0;
  private hops = 0;
  private redirectUrl: string | undefined;
  /** The node's retryAfterMs, the least wait before the next attempt. */
  private minDelayMs = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private helloTimer: ReturnType<typeof setTimeout> | undefined;
  private token: string | undefined;
  private tokenPending: Promise<string> | undefined;
  private tokenStale = false;
  private sub = '';

  constructor(
    private readonly opts: ConnectionOptions,
    private readonly hooks: ConnectionHooks,
  ) {
    if (typeof opts.token === 'string') this.setToken(opts.token);
    else this.fetchToken();
  }

  /** The token's `sub` ('' until a token function has given one). */
  get user(): string {
    return this.sub;
  }

  get isOpen(): boolean {
    return this.state === 'open';
  }

  start(): void {
    if (this.state !== 'idle') return;
    void this.attempt();
  }

  stop(): void {
    this.gen++;
    this.clearTimers();
    this.detach();
    this.setState('closed');
  }

  /** Writes a frame on the welcomed connection; false when there is none. */
  send(frame: ClientFrame): boolean {
    if (this.state !== 'open' || !this.ws || this.ws.readyState !== WS_OPEN) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---- token ---------------------------------------------------------------------------------

  private setToken(t: string): void {
    this.token = t;
    this.sub = tokenClaims(t).sub ?? '';
  }

  private fetchToken(): void {
    const fn = this.opts.token as () => string | Promise<string>;
    let r: string | Promise<string>;
    try {
      r = fn();
    } catch (e) {
      this.tokenPending = Promise.reject(e);
      this.tokenPending.catch(() => undefined);
      return;
    }
    if (typeof r === 'string') {
      this.tokenPending = undefined;
      this.setToken(r);
      return;
    }
    const p: Promise<string> = Promise.resolve(r).then((t) => {
      if (typeof t !== 'string') throw new TypeError('the token function gave no string');
      if (this.tokenPending === p) {
        this.tokenPending = undefined;
        this.setToken(t);
      }
      return t;
    });
    p.catch(() => undefined);
    this.tokenPending = p;
  }

  private async currentToken(): Promise<string> {
    if (typeof this.opts.token === 'string') return this.opts.token;
    const exp = this.token === undefined ? undefined : tokenClaims(this.token).exp;
    const expired = exp !== undefined && exp * 1000 <= Date.now();
    if (this.tokenStale || expired || (this.token === undefined && !this.tokenPending)) {
      this.tokenStale = false;
      this.fetchToken();
    }
    if (this.tokenPending) {
      try {
        return await this.tokenPending;
      } catch (e) {
        this.tokenPending = undefined;
        this.tokenStale = true;
        throw new ChatError('TOKEN', `the token function failed: ${String(e)}`);
      }
    }
    return this.token ?? '';
  }

  // ---- attempts ------------------------------------------------------------------------------

  private setState(s: ConnState): void {
    if (this.state === s) return;
    this.state = s;
    this.hooks.state(s);
  }

  private async attempt(): Promise<void> {
    const gen = ++this.gen;
    this.welcomed = false;
    this.setState(this.everOpen ? 'reconnecting' : 'connecting');
    let token: string;
    let url: string;
    try {
      token = await this.currentToken();
      if (gen !== this.gen) return;
      url = this.redirectUrl ?? (this.opts.router !== undefined ? await this.lookup() : this.opts.url ?? '');
      if (gen !== this.gen) return;
    } catch (e) {
      if (gen !== this.gen) return;
      if (e instanceof ChatError) this.hooks.error(e);
      this.fail(false);
      return;
    }
    this.redirectUrl = undefined;
    this.open(url, token, gen);
  }

  /** The home node's WebSocket URL, from the router. */
  private async lookup(): Promise<string> {
    const f = this.opts.fetch;
    if (!f) throw new ChatError('CONFIG', 'no fetch function (pass options.fetch)');
    const base = (this.opts.router ?? '').replace(/\/+$/, '');
    const res = await f(`${base}/v1/route/${encodeURIComponent(this.sub)}`);
    if (!res.ok) {
      let detail = '';
      try {
        const body = (await res.json()) as { error?: unknown; code?: unknown; message?: unknown };
        detail = [body.code, body.error ?? body.message].filter((x) => typeof x === 'string').join(': ');
      } catch {
        // no JSON body
      }
      throw new ChatError('HTTP', `route lookup: HTTP ${res.status}${detail ? ` ${detail}` : ''}`, {
        status: res.status,
      });
    }
    const body = (await res.json()) as { url?: unknown };
    if (typeof body.url !== 'string' || body.url === '') {
      throw new ChatError('PROTOCOL', 'route lookup answered without a url');
    }
    return body.url;
  }

  private open(url: string, token: string, gen: number): void {
    const WS = this.opts.WebSocket;
    let ws: WebSocket;
    try {
      if (!WS) throw new ChatError('CONFIG', 'no WebSocket class (pass options.WebSocket)');
      ws = new WS(url);
    } catch (e) {
      this.hooks.error(e instanceof ChatError ? e : new ChatError('CONFIG', `WebSocket(${url}): ${String(e)}`));
      this.fail(false);
      return;
    }
    this.ws = ws;
    this.helloTimer = setTimeout(() => {
      this.helloTimer = undefined;
      if (gen === this.gen && this.ws === ws) this.lost();
    }, this.opts.connectTimeoutMs);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      const hello = helloFrame(token, this.opts.agent, this.hooks.resumeAfter());
      try {
        ws.send(JSON.stringify(hello));
      } catch {
        this.lost();
      }
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (this.ws !== ws || typeof ev.data !== 'string') return;
      this.onText(ev.data);
    };
    ws.onclose = () => {
      if (this.ws === ws) this.lost();
    };
    // A close event follows every error event.
    ws.onerror = () => undefined;
  }

  private onText(text: string): void {
    let f: ServerFrame;
    try {
      f = decodeServerFrame(text);
    } catch {
      this.hooks.error(new ChatError('PROTOCOL', 'the node sent a frame that is not JSON'));
      return;
    }
    switch (f.kind) {
      case 'welcome':
        this.onWelcome(f.welcome);
        return;
      case 'redirect':
        this.hooks.redirect({ url: f.url, epoch: f.epoch });
        this.followRedirect(f.url);
        return;
      case 'error':
        if (f.error.ref === undefined) {
          this.onConnError(f.error);
          return;
        }
        break;
      default:
        break;
    }
    if (this.welcomed) this.hooks.frame(f);
  }

  private onWelcome(w: Welcome): void {
    if (this.welcomed) return;
    clearTimeout(this.helloTimer);
    this.helloTimer = undefined;
    this.welcomed = true;
    this.everOpen = true;
    this.openedAt = Date.now();
    this.hops = 0;
    this.minDelayMs = 0;
    this.state = 'open';
    this.hooks.open(w);
  }

  /** An error frame without ref: about the connection (hello refused, overload, shutdown). */
  private onConnError(e: WireError): void {
    const err = new ChatError(e.code, e.message, retryHint(e));
    // The node's wait before the next connection: any refusal of this one (overloaded, rate of
    // new connections, no ring yet), or the end of a welcomed one (shutting down).
    if (e.retryAfterMs && (!this.welcomed || CONNECTION_ENDING.has(e.code))) {
      this.minDelayMs = Math.max(this.minDelayMs, e.retryAfterMs);
    }
    this.hooks.error(err);
    const tokenRefused = TOKEN_CODES.has(e.code);
    if (!tokenRefused && e.code !== 'TOO_MANY_DEVICES') return;
    if (typeof this.opts.token === 'string') {
      if (!tokenRefused) return; // the node closes; try again later with backoff
      // The same token would be refused again: stop rather than hammer the node.
      this.gen++;
      this.clearTimers();
      this.detach();
      this.setState('closed');
      this.hooks.stopped(err);
      return;
    }
    // A new token for the next attempt; do not wait for the node to close after 3 refusals.
    this.tokenStale = true;
    this.lost();
  }

  private followRedirect(url: string): void {
    const wasOpen = this.welcomed;
    this.detach();
    if (wasOpen) this.wentDown();
    this.hops++;
    if (this.hops > MAX_HOPS) {
      this.fail(wasOpen);
      return;
    }
    this.redirectUrl = url;
    void this.attempt();
  }

  /** The socket closed, failed, or timed out before welcome. */
  private lost(): void {
    const wasOpen = this.welcomed;
    this.detach();
    if (wasOpen) this.wentDown();
    this.fail(wasOpen);
  }

  private wentDown(): void {
    this.welcomed = false;
    this.setState('reconnecting');
    this.hooks.down();
  }

  /** Waits a backoff, then starts again from the router (or the configured URL). */
  private fail(wasOpen: boolean): void {
    this.gen++;
    this.welcomed = false;
    this.hops = 0;
    this.redirectUrl = undefined;
    if (wasOpen && Date.now() - this.openedAt >= STABLE_MS) this.failures = 0;
    this.failures++;
    const cap = Math.min(this.opts.maxMs, this.opts.initialMs * 2 ** Math.min(this.failures - 1, 30));
    const delay = Math.max(Math.random() * cap, this.minDelayMs);
    this.minDelayMs = 0;
    this.setState(this.everOpen ? 'reconnecting' : 'connecting');
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.attempt();
    }, delay);
  }

  private detach(): void {
    clearTimeout(this.helloTimer);
    this.helloTimer = undefined;
    const ws = this.ws;
    this.ws = undefined;
    if (!ws) return;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = null;
    try {
      if (ws.readyState <= WS_OPEN) ws.close(1000);
    } catch {
      // already closing
    }
  }

  private clearTimers(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    clearTimeout(this.helloTimer);
    this.helloTimer = undefined;
  }
}
