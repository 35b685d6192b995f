// Media bytes never go through the WebSocket: the node signs a URL, and the bytes go straight to
// the blob store with fetch (docs/protocol.md, "Media attachments").

import { ChatError } from './errors.js';
import type { MediaReply } from './types.js';

/** The bytes of a Blob or a Uint8Array, in a buffer of their own (what fetch and WebCrypto take). */
export async function bytesOf(data: Blob | Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  if (data instanceof Uint8Array) {
    const copy = new Uint8Array(data.length);
    copy.set(data);
    return copy;
  }
  return new Uint8Array(await data.arrayBuffer());
}

/** A media type as the node keeps it: lowercase, without parameters (`; charset=...`). */
export function canonicalMime(mime: string): string {
  return (mime.split(';')[0] ?? '').trim().toLowerCase();
}

/**
 * PUTs the bytes to a signed upload URL with exactly the headers the node gave. A refusal is a
 * ChatError 'HTTP' with the status, and the code of the store's JSON error body if it has one.
 */
export async function putUpload(
  fetchFn: typeof fetch,
  reply: MediaReply,
  bytes: Uint8Array<ArrayBuffer>,
): Promise<void> {
  const headers: [string, string][] = reply.headers.map((h) => [h.name, h.value]);
  let res: Response;
  try {
    res = await fetchFn(reply.url, { method: reply.method || 'PUT', headers, body: bytes });
  } catch (e) {
    throw new ChatError('HTTP', `upload of ${reply.mediaId} failed: ${String(e)}`);
  }
  if (res.ok) return;
  let code = '';
  let message = '';
  try {
    const text = await res.text();
    const body = JSON.parse(text) as { code?: unknown; message?: unknown };
    if (typeof body.code === 'string') code = body.code;
    if (typeof body.message === 'string') message = body.message;
  } catch {
    // not JSON (an S3 store answers XML)
  }
  const detail = [code, message].filter((s) => s !== '').join(': ');
  throw new ChatError('HTTP', `upload of ${reply.mediaId}: HTTP ${res.status}${detail ? ` ${detail}` : ''}`, {
    status: res.status,
    ...(code ? { serverCode: code } : {}),
  });
}
