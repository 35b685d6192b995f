// Scripted stand-ins for the network: a WebSocket class whose sockets a test drives as the node
// would, and a fetch that answers from a handler. Nothing here opens a socket.

import { ChatClient } from '../src/index.js';
import type { ClientOptions } from '../src/index.js';

export interface FakeEvent {
  data?: unknown;
  code?: number;
}

/** One socket the client opened: `accept`, `reply` and `drop` act as the node. */
export class FakeSocket {
  readyState = 0;
  readonly sent: string[] = [];
  closedByClient: number | undefined;
  onopen: ((ev: FakeEvent) => void) | null = null;
  onmessage: ((ev: FakeEvent) => void) | null = null;
  onclose: ((ev: FakeEvent) => void) | null = null;
  onerror: ((ev: FakeEvent) => void) | null = null;

  constructor(readonly url: string) {}

  // What the client calls.
  send(data: string): void {
    if (this.readyState !== 1) throw new Error('InvalidStateError: the socket is not open');
    this.sent.push(data);
  }
  close(code = 1000): void {
    if (this.readyState >= 2) return;
    this.closedByClient = code;
    this.readyState = 3;
    // As browsers do: the close event comes later.
    setTimeout(() => this.onclose?.({ code }), 0);
  }

  // What the node does.
  accept(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  reply(frame: object | string): void {
    if (this.readyState !== 1) throw new Error('the socket is not open');
    this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }
  drop(code = 1006): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code });
  }

  /** The frames the client wrote, parsed. */
  frames(): Record<string, unknown>[] {
    return this.sent.map((s) => JSON.parse(s) as Record<string, unknown>);
  }
  /** The bodies of the frames of one kind. */
  of(kind: string): Record<string, unknown>[] {
    return this.frames()
      .filter((f) => kind in f)
      .map((f) => f[kind] as Record<string, unknown>);
  }
}

export interface FetchCall {
  url: string;
  method: string;
  headers: [string, string][];
  body: Uint8Array | undefined;
}

export interface FakeNet {
  WebSocket: typeof WebSocket;
  fetch: typeof fetch;
  sockets: FakeSocket[];
  fetches: FetchCall[];
  /** Answers a fetch (default: the route lookup, home at ws://node-1). */
  handler: (call: FetchCall) => Response | Promise<Response>;
  /** The n-th socket (0-based), once the client has opened it. */
  socket(n: number): Promise<FakeSocket>;
}

export function fakeNet(): FakeNet {
  const net: FakeNet = {
    sockets: [],
    fetches: [],
    handler: (call) => {
      const user = decodeURIComponent(call.url.split('/v1/route/')[1] ?? '');
      return json(200, { user, node: 'n1', url: 'ws://node-1', epoch: 1 });
    },
    WebSocket: undefined as unknown as typeof WebSocket,
    fetch: undefined as unknown as typeof fetch,
    socket: async (n) => {
      await waitFor(() => net.sockets.length > n, `socket #${n} to be opened`);
      return net.sockets[n]!;
    },
  };
  class WS extends FakeSocket {
    constructor(url: string) {
      super(url);
      net.sockets.push(this);
    }
  }
  net.WebSocket = WS as unknown as typeof WebSocket;
  net.fetch = (async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const h = new Headers(init?.headers);
    const headers: [string, string][] = [];
    h.forEach((value, name) => headers.push([name, value]));
    const raw = init?.body;
    const call: FetchCall = {
      url: String(input),
      method: init?.method ?? 'GET',
      headers,
      body: raw instanceof Uint8Array ? raw : undefined,
    };
    net.fetches.push(call);
    return net.handler(call);
  }) as typeof fetch;
  return net;
}

export function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
}

/** An unsigned JWT for `sub` (the client does not verify tokens). */
export function jwt(sub: string, extra: Record<string, unknown> = {}): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, dev: 'web', exp: 4102444800, ...extra })}.c2ln`;
}

/** Polls until `cond` holds; fails after a generous deadline (the machine may be loaded). */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 10000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function welcome(extra: Record<string, unknown> = {}): object {
  return { welcome: { user: 'alice', device: 'web', node: 'node-1', ...extra } };
}

/** A client on a fake network, with fast backoff. */
export function client(net: FakeNet, opts: Partial<ClientOptions> = {}): ChatClient {
  return new ChatClient({
    router: 'http://router',
    token: jwt('alice'),
    agent: 'test/1',
    WebSocket: net.WebSocket,
    fetch: net.fetch,
    backoff: { initialMs: 1, maxMs: 5 },
    ...opts,
  });
}

/** Connects a client: the route lookup, the socket, hello, welcome. */
export async function connected(
  net: FakeNet,
  opts: Partial<ClientOptions> = {},
): Promise<{ c: ChatClient; ws: FakeSocket }> {
  const c = client(net, opts);
  const p = c.connect();
  const ws = await net.socket(net.sockets.length);
  ws.accept();
  await waitFor(() => ws.of('hello').length === 1, 'hello');
  ws.reply(welcome());
  await p;
  return { c, ws };
}

/** The socket the client is opening now (the newest, still connecting). */
export async function opening(net: FakeNet): Promise<FakeSocket> {
  await waitFor(() => net.sockets.at(-1)?.readyState === 0, 'a new socket');
  return net.sockets.at(-1)!;
}

/** Waits for the client's next socket, accepts it and welcomes the client. */
export async function reconnect(net: FakeNet, c: ChatClient, extra: Record<string, unknown> = {}): Promise<FakeSocket> {
  const ws = await opening(net);
  ws.accept();
  await waitFor(() => ws.of('hello').length === 1, 'hello on the new socket');
  ws.reply(welcome(extra));
  await waitFor(() => c.state === 'open', 'state open');
  return ws;
}
