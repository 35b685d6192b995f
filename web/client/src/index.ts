// @chat/client: the browser client of the chat server's WebSocket protocol.

export { ChatClient } from './client.js';
export { ChatError, RETRYABLE_SEND_CODES } from './errors.js';
export type { ChatErrorDetails } from './errors.js';
export type {
  Attachment,
  AttachmentIn,
  ClientOptions,
  ConnState,
  Entry,
  Events,
  Failed,
  GroupEvent,
  GroupEventKind,
  GroupInfo,
  GroupMember,
  GroupReceipts,
  GroupSummary,
  HttpHeader,
  Limits,
  MediaReply,
  Message,
  PendingSend,
  PresenceStatus,
  Receipt,
  ReceiptKind,
  SendInput,
  Sent,
  Seq,
  TypingNotice,
  Welcome,
} from './types.js';
export { decodeServerFrame, fromBase64, toBase64 } from './wire.js';
export { tokenClaims } from './ids.js';
export type { ServerFrame, WireError } from './wire.js';
