// Ids: the ones this library makes (clientMsgIds, the idempotency key of a send, and
// requestIds), the protocol's rule for ids, and the user id in a token.

import { fromBase64 } from './wire.js';

let counter = 0;

function random36(n: number): string {
  let s = '';
  while (s.length < n) s += Math.random().toString(36).slice(2);
  return s.slice(0, n);
}

/**
 * A unique clientMsgId: a random UUID where the platform has `crypto.randomUUID` (browsers give
 * it to secure contexts only), else time, a counter and randomness. Always within the protocol's
 * id rules: `[A-Za-z0-9-_.:@+=/]`, at most 64 bytes.
 */
export function newClientMsgId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  counter++;
  return `${Date.now().toString(36)}-${counter.toString(36)}-${random36(12)}`;
}

/** Makes requestIds for one client: a random prefix (so they do not look like clientMsgIds) and a counter. */
export function requestIds(): () => string {
  const prefix = `q${random36(6)}-`;
  let n = 0;
  return () => `${prefix}${++n}`;
}

/** A JWT's payload claims, unverified (`sub`: the user; `exp`: seconds since the epoch). */
export function tokenClaims(token: string): { sub?: string; dev?: string; exp?: number } {
  const part = token.split('.')[1];
  if (part === undefined) return {};
  try {
    const json: unknown = JSON.parse(new TextDecoder().decode(fromBase64(part)));
    const o = (typeof json === 'object' && json !== null ? json : {}) as Record<string, unknown>;
    const claims: { sub?: string; dev?: string; exp?: number } = {};
    if (typeof o.sub === 'string') claims.sub = o.sub;
    if (typeof o.dev === 'string') claims.dev = o.dev;
    if (typeof o.exp === 'number') claims.exp = o.exp;
    return claims;
  } catch {
    return {};
  }
}

/** The ids the protocol allows: 1 to 64 bytes of ASCII letters, digits and `-_.:@+=/`. */
export function isValidId(id: string): boolean {
  return /^[A-Za-z0-9\-_.:@+=/]{1,64}$/.test(id);
}
