// The web client's state: conversations, their messages and ticks, unread counts, typing and
// presence. Pure: it is told what arrived and what the user did, and answers what to show and
// which read marker to send. No DOM, no network, so it is unit-tested in Node.

import type { Attachment, AttachmentIn, GroupEvent, Message, PresenceStatus, Receipt } from '@chat/client';

/// ⌛ (not yet stored), ✓ (stored), ✓✓ (on a device of the recipient), read (blue), or refused.
export type Tick = 'pending' | 'sent' | 'delivered' | 'read' | 'failed';

const TICK_RANK: Record<Tick, number> = { failed: -1, pending: 0, sent: 1, delivered: 2, read: 3 };

export interface ChatMessage {
  /// Stable key for the view: the client message id when known, else the message id.
  key: string;
  msgId?: string;
  clientMsgId?: string;
  from: string;
  body: string;
  ts: number;
  /// Inbox position; unset for this device's own sends (they are not in its inbox).
  seq?: number;
  mine: boolean;
  tick?: Tick;
  attachment?: Attachment | AttachmentIn;
  /// A group event shown as a line of its own ("alice added dave").
  system?: boolean;
  error?: string;
}

export interface Conversation {
  /// The peer's user id, or the group's id.
  id: string;
  kind: 'direct' | 'group';
  title: string;
  messages: ChatMessage[];
  lastTs: number;
  /// Messages from others this user has not read.
  unread: number;
}

interface TypingShown {
  who: string;
  until: number;
}

export class Store {
  readonly me: string;
  readonly conversations = new Map<string, Conversation>();
  /// The conversation on screen, if any.
  open?: string;
  /// Every entry up to here is read (this device's or another's read marker).
  readSeq = 0;
  /// Highest inbox seq seen.
  lastSeq = 0;
  readonly presence = new Map<string, PresenceStatus>();
  private readonly typing = new Map<string, TypingShown>();
  /// Unread messages of others, by seq, with their conversation.
  private readonly unreadSeqs = new Map<number, string>();
  private readonly seenSeqs = new Set<number>();

  constructor(me: string) {
    this.me = me;
  }

  conversation(id: string, kind: 'direct' | 'group', title?: string): Conversation {
    let c = this.conversations.get(id);
    if (!c) {
      c = { id, kind, title: title ?? id, messages: [], lastTs: 0, unread: 0 };
      this.conversations.set(id, c);
    } else if (title && kind === 'group') {
      c.title = title;
    }
    return c;
  }

  /// Conversations, most recent first.
  sorted(): Conversation[] {
    return [...this.conversations.values()].sort((a, b) => b.lastTs - a.lastTs || a.id.localeCompare(b.id));
  }

  /// This device sends: shown at once with ⌛.
  addOutgoing(convId: string, kind: 'direct' | 'group', clientMsgId: string, body: string, attachment?: AttachmentIn, now = Date.now()): ChatMessage {
    const c = this.conversation(convId, kind);
    const m: ChatMessage = { key: clientMsgId, clientMsgId, from: this.me, body, ts: now, mine: true, tick: 'pending', attachment };
    this.push(c, m);
    return m;
  }

  /// ✓ for one of this device's sends.
  onSent(clientMsgId: string, msgId: string, ts: number): void {
    const m = this.findMine((x) => x.clientMsgId === clientMsgId);
    if (!m) return;
    m.msgId = msgId;
    m.ts = ts;
    const wasWaiting = m.tick === 'pending';
    this.raise(m, 'sent');
    if (wasWaiting) {
      // Its place is now its ✓ time: after what was stored before it.
      const c = this.conversationOf(m);
      if (c) {
        c.messages.splice(c.messages.indexOf(m), 1);
        this.push(c, m);
      }
    }
  }

  /// A send the node refused for good.
  onSendFailed(clientMsgId: string, why: string): void {
    const m = this.findMine((x) => x.clientMsgId === clientMsgId);
    if (!m) return;
    m.tick = 'failed';
    m.error = why;
  }

  /// An inbox entry that is a message: from someone else, or this user's own from another device
  /// (or this device's, which then only confirms it). Returns its conversation's id.
  onMessage(seq: number, msg: Message): string | undefined {
    if (!this.firstSight(seq)) return undefined;
    const mine = msg.from === this.me;
    const group = msg.group || undefined;
    const convId = group ?? (mine ? msg.to : msg.from);
    const c = this.conversation(convId, group ? 'group' : 'direct');
    if (mine) {
      const known = c.messages.find((x) => x.mine && ((msg.clientMsgId && x.clientMsgId === msg.clientMsgId) || x.msgId === msg.msgId));
      if (known) {
        known.seq = seq;
        known.msgId = msg.msgId;
        this.raise(known, 'sent');
        return convId;
      }
    } else if (c.messages.some((x) => x.msgId === msg.msgId)) {
      return convId;
    }
    this.push(c, {
      key: msg.msgId,
      msgId: msg.msgId,
      clientMsgId: msg.clientMsgId,
      from: msg.from,
      body: msg.body ?? '',
      ts: msg.ts,
      seq,
      mine,
      tick: mine ? 'sent' : undefined,
      attachment: msg.attachment,
    });
    if (!mine && seq > this.readSeq) {
      if (this.open === convId) {
        // On screen: read as it arrives (the marker goes out with `readTarget`).
        this.unreadSeqs.set(seq, '');
      } else {
        this.unreadSeqs.set(seq, convId);
        c.unread += 1;
      }
    }
    return convId;
  }

  /// ✓✓ or read for messages this user sent. Ticks only go up.
  onReceipt(seq: number, r: Receipt): void {
    if (!this.firstSight(seq)) return;
    const ids = new Set(r.msgIds);
    for (const c of this.conversations.values()) {
      for (const m of c.messages) {
        if (m.mine && m.msgId && ids.has(m.msgId)) this.raise(m, r.kind === 'read' ? 'read' : 'delivered');
      }
    }
  }

  onGroupEvent(seq: number, ev: GroupEvent): string | undefined {
    if (!this.firstSight(seq)) return undefined;
    const c = this.conversation(ev.group, 'group', ev.name || undefined);
    const who = (u: string) => (u === this.me ? 'you' : u);
    // A CREATED event lists every first member, its creator included.
    const named = ev.kind === 'created' ? (ev.users ?? []).filter((u) => u !== ev.by) : (ev.users ?? []);
    const users = named.map(who).join(', ');
    const text: Record<string, string> = {
      created: `${who(ev.by)} created “${ev.name}” with ${users}`,
      added: `${who(ev.by)} added ${users}`,
      removed: `${who(ev.by)} removed ${users}`,
      left: `${users || who(ev.by)} left`,
      renamed: `${who(ev.by)} renamed the group to “${ev.name}”`,
      promoted: `${who(ev.by)} made ${users} admin`,
      demoted: `${who(ev.by)} removed ${users} as admin`,
    };
    this.push(c, { key: `ev-${seq}`, from: ev.by, body: text[ev.kind] ?? `${ev.kind}`, ts: ev.ts, seq, mine: false, system: true });
    return ev.group;
  }

  /// Another device (or this one, echoed) read up to `upTo`.
  onReadState(upTo: number): void {
    if (upTo <= this.readSeq) return;
    this.readSeq = upTo;
    for (const [seq, convId] of [...this.unreadSeqs]) {
      if (seq > upTo) continue;
      this.unreadSeqs.delete(seq);
      const c = this.conversations.get(convId);
      if (c && c.unread > 0) c.unread -= 1;
    }
  }

  /// The user looks at `id`: its messages count as read.
  openConversation(id: string): void {
    this.open = id;
    const c = this.conversations.get(id);
    if (!c) return;
    for (const [seq, convId] of this.unreadSeqs) {
      if (convId === id) this.unreadSeqs.set(seq, '');
    }
    c.unread = 0;
  }

  /// The read marker to send, if it moves: the inbox is read up to just before the oldest message
  /// still unread in a conversation not looked at (markers are cumulative over the whole inbox).
  readTarget(): number | undefined {
    let oldestUnseen = Infinity;
    for (const [seq, convId] of this.unreadSeqs) {
      if (convId !== '' && seq < oldestUnseen) oldestUnseen = seq;
    }
    const target = oldestUnseen === Infinity ? this.lastSeq : Math.min(this.lastSeq, oldestUnseen - 1);
    return target > this.readSeq ? target : undefined;
  }

  /// A read marker was sent: everything up to `upTo` is read.
  markedRead(upTo: number): void {
    this.onReadState(upTo);
  }

  onTyping(from: string, group: string | undefined, typing: boolean, expiresInMs: number, now = Date.now()): void {
    const convId = group || from;
    if (typing) this.typing.set(convId, { who: from, until: now + expiresInMs });
    else if (this.typing.get(convId)?.who === from) this.typing.delete(convId);
  }

  /// Who is typing in `convId` now, if anyone.
  typingIn(convId: string, now = Date.now()): string | undefined {
    const t = this.typing.get(convId);
    if (!t) return undefined;
    if (t.until <= now) {
      this.typing.delete(convId);
      return undefined;
    }
    return t.who;
  }

  /// A message that arrives ends its sender's typing notice.
  stopTyping(convId: string, who: string): void {
    if (this.typing.get(convId)?.who === who) this.typing.delete(convId);
  }

  onPresence(s: PresenceStatus): void {
    this.presence.set(s.user, s);
  }

  /// The users whose presence matters: the peers of direct conversations.
  peers(): string[] {
    return [...this.conversations.values()].filter((c) => c.kind === 'direct').map((c) => c.id).sort();
  }

  private firstSight(seq: number): boolean {
    if (seq > this.lastSeq) this.lastSeq = seq;
    if (this.seenSeqs.has(seq)) return false;
    this.seenSeqs.add(seq);
    return true;
  }

  /// Places a message: inbox entries by seq (history pages arrive newest first, after live
  /// ones), others by time, and this device's sends still waiting for ✓ last, in send order.
  private push(c: Conversation, m: ChatMessage): void {
    const waiting = (x: ChatMessage) => x.mine && x.tick === 'pending';
    const later = (x: ChatMessage) => (x.seq !== undefined && m.seq !== undefined ? x.seq > m.seq : x.ts > m.ts);
    const i = waiting(m) ? -1 : c.messages.findIndex((x) => x !== m && (waiting(x) || later(x)));
    if (i < 0) c.messages.push(m);
    else c.messages.splice(i, 0, m);
    if (m.ts > c.lastTs) c.lastTs = m.ts;
  }

  private conversationOf(m: ChatMessage): Conversation | undefined {
    for (const c of this.conversations.values()) if (c.messages.includes(m)) return c;
    return undefined;
  }

  private findMine(pred: (m: ChatMessage) => boolean): ChatMessage | undefined {
    for (const c of this.conversations.values()) {
      const m = c.messages.find((x) => x.mine && pred(x));
      if (m) return m;
    }
    return undefined;
  }

  private raise(m: ChatMessage, t: Tick): void {
    if (m.tick === undefined || TICK_RANK[t] > TICK_RANK[m.tick]) m.tick = t;
  }
}
