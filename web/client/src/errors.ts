// The one error type the library rejects with and reports.

export interface ChatErrorDetails {
  /** The clientMsgId or requestId the error answers. */
  ref?: string;
  /** When the node asks to try again later. */
  retryAfterMs?: number;
  /** For code 'HTTP': the HTTP status. */
  status?: number;
  /** For code 'HTTP': the error code in the answer's JSON body (e.g. 'URL_EXPIRED'), if any. */
  serverCode?: string;
}

/**
 * `code` is the protocol's error code without its `ERROR_CODE_` prefix (e.g. 'NOT_A_MEMBER'),
 * or one of the library's own: 'TIMEOUT' (no answer in time), 'DISCONNECTED' (the connection
 * ended before the answer), 'CLOSED' (`close()` was called), 'HTTP' (a media PUT or a route
 * lookup was refused), 'PROTOCOL' (the node sent something this library cannot read), 'TOKEN'
 * (the token function threw), 'CONFIG' (no WebSocket or fetch to use, or a malformed URL).
 */
export class ChatError extends Error {
  readonly code: string;
  retryAfterMs?: number;
  ref?: string;
  status?: number;
  serverCode?: string;

  constructor(code: string, message?: string, details: ChatErrorDetails = {}) {
    super(message ? `${code}: ${message}` : code);
    this.name = 'ChatError';
    this.code = code;
    if (details.ref !== undefined) this.ref = details.ref;
    if (details.retryAfterMs !== undefined) this.retryAfterMs = details.retryAfterMs;
    if (details.status !== undefined) this.status = details.status;
    if (details.serverCode !== undefined) this.serverCode = details.serverCode;
  }
}

/**
 * Refusals of a `send` after which the same message (same clientMsgId) is sent again: nothing
 * was stored, and the node asks to try later (docs/protocol.md, "Error codes"). INTERNAL also
 * stored nothing; the node deduplicates by clientMsgId, so a retry is safe. Every other code is
 * definitive: the message itself is wrong and sending it again cannot help.
 */
export const RETRYABLE_SEND_CODES: ReadonlySet<string> = new Set([
  'OVERLOADED',
  'RATE_LIMITED',
  'STORAGE_FULL',
  'UNAVAILABLE',
  'SHUTTING_DOWN',
  'INTERNAL',
]);

/** Refusals of the token at `hello`. */
export const TOKEN_CODES: ReadonlySet<string> = new Set(['TOKEN_INVALID', 'TOKEN_EXPIRED']);

/** `{ retryAfterMs }` when the node gave one, else nothing (to spread into ChatErrorDetails). */
export function retryHint(e: { retryAfterMs?: number | undefined }): { retryAfterMs?: number } {
  return e.retryAfterMs === undefined ? {} : { retryAfterMs: e.retryAfterMs };
}
