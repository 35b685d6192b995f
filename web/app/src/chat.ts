// The signed-in page: the client's events go into the store, the user's actions go to the
// client, and the view is redrawn once per animation frame after any change.

import { ChatClient, ChatError } from '@chat/client';
import type { Entry, PendingSend } from '@chat/client';
import { Store } from './store.js';
import type { ChatMessage } from './store.js';
import { thumbnail } from './thumbnail.js';
import { $, drawConversation, drawList, presenceText, showConn } from './view.js';
import type { MediaView } from './view.js';

const TYPING_REPEAT_MS = 3000;
/// Inbox entries asked for per history page (the node's maximum is 200).
const HISTORY_PAGE = 50;

export class ChatPage {
  private readonly client: ChatClient;
  private readonly store: Store;
  private drawPending = false;
  private typingSentAt = 0;
  private watched = '';
  private loaded = false;
  private readonly urls = new Map<string, string>();
  private groupMembers = new Map<string, string[]>();
  /// The oldest inbox seq loaded from history, and whether older entries exist.
  private oldest = 0;
  private more = false;

  constructor(client: ChatClient) {
    this.client = client;
    this.store = new Store(client.user);
    $('me').textContent = client.user;
    this.listen();
    this.bindForms();
  }

  async start(): Promise<void> {
    showConn('connecting');
    await this.client.connect();
  }

  private listen(): void {
    const c = this.client;
    c.on('state', (s) => showConn(s));
    c.on('welcome', (w) => {
      // Which node serves this page (for people who run the cluster, and the tests).
      $('conn').dataset.node = w.node;
      $('conn').title = `served by node ${w.node}`;
      this.store.onReadState(w.readSeq);
      if (!this.loaded) {
        this.loaded = true;
        void this.loadInitial();
      }
      this.watched = '';
      void this.watchPresence();
      this.draw();
    });
    c.on('message', ({ seq, message }) => {
      const conv = this.store.onMessage(seq, message);
      if (conv) this.store.stopTyping(conv, message.from);
      this.afterChange();
    });
    c.on('receipt', ({ seq, receipt }) => {
      this.store.onReceipt(seq, receipt);
      this.draw();
    });
    c.on('groupEvent', ({ seq, event }) => {
      this.store.onGroupEvent(seq, event);
      // The member list changed: ask again if it is on screen, else when it is opened.
      this.groupMembers.delete(event.group);
      if (this.store.open === event.group) this.loadMembers(event.group);
      this.afterChange();
    });
    c.on('sent', (s) => {
      this.store.onSent(s.clientMsgId, s.msgId, s.ts);
      this.draw();
    });
    c.on('typing', (t) => {
      this.store.onTyping(t.from, t.group, t.typing, t.expiresInMs);
      this.draw();
      // Redraw when the notice expires, should no STOPPED come.
      if (t.typing) setTimeout(() => this.draw(), t.expiresInMs + 50);
    });
    c.on('presence', (p) => {
      this.store.onPresence(p);
      this.draw();
    });
    c.on('readState', (r) => {
      this.store.onReadState(r.upToSeq);
      this.draw();
    });
    c.on('error', (e) => this.showError(e));
  }

  /// What the node holds from before this page: the user's groups, then the newest history page
  /// (oldest first, so receipts find their messages).
  private async loadInitial(): Promise<void> {
    try {
      for (const g of await this.client.myGroups()) this.store.conversation(g.group, 'group', g.name);
      await this.loadHistory();
    } catch (e) {
      this.showError(e);
    }
  }

  /// One page of history before what is loaded (oldest first, so receipts find their messages).
  private async loadHistory(): Promise<void> {
    const beforeSeq = this.oldest > 0 ? this.oldest : undefined;
    const page = await this.client.history({ beforeSeq, limit: HISTORY_PAGE });
    for (const e of [...page.entries].sort((a, b) => a.seq - b.seq)) this.apply(e);
    const seqs = page.entries.map((e) => e.seq);
    if (seqs.length > 0) this.oldest = Math.min(...seqs);
    this.more = page.more && seqs.length > 0;
    $('older').hidden = !this.more;
    this.afterChange();
  }

  private apply(e: Entry): void {
    if (e.message) this.store.onMessage(e.seq, e.message);
    else if (e.receipt) this.store.onReceipt(e.seq, e.receipt);
    else if (e.groupEvent) this.store.onGroupEvent(e.seq, e.groupEvent);
  }

  private afterChange(): void {
    this.markRead();
    void this.watchPresence();
    this.draw();
  }

  /// Sends the read marker when the open conversation made it move (only while the page is seen).
  private markRead(): void {
    if (document.visibilityState === 'hidden') return;
    const upTo = this.store.readTarget();
    if (upTo === undefined) return;
    this.client.read(upTo);
    this.store.markedRead(upTo);
  }

  private async watchPresence(): Promise<void> {
    const peers = this.store.peers();
    const key = peers.join(',');
    if (key === this.watched || this.client.state !== 'open') return;
    this.watched = key;
    try {
      for (const s of await this.client.presenceWatch(peers)) this.store.onPresence(s);
      this.draw();
    } catch (e) {
      this.watched = '';
      this.showError(e);
    }
  }

  private open(id: string): void {
    this.store.openConversation(id);
    $('conv-error').textContent = '';
    const conv = this.store.conversations.get(id);
    $('composer').hidden = false;
    $('add-member-form').hidden = conv?.kind !== 'group';
    if (conv?.kind === 'group' && !this.groupMembers.has(id)) this.loadMembers(id);
    this.afterChange();
    $<HTMLInputElement>('text').focus();
  }

  private loadMembers(group: string): void {
    this.client.groupInfo(group).then(
      (info) => {
        this.groupMembers.set(group, info.members.map((m) => m.user));
        this.store.conversation(group, 'group', info.name);
        this.draw();
      },
      (e) => this.showError(e),
    );
  }

  private draw(): void {
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      const s = this.store;
      drawList(s, (id) => this.open(id));
      const conv = s.open ? s.conversations.get(s.open) : undefined;
      const title = $('conv-title');
      title.textContent = conv ? conv.title : 'No conversation open';
      title.dataset.kind = conv?.kind ?? '';
      $('conv-sub').textContent = !conv
        ? ''
        : conv.kind === 'group'
          ? (this.groupMembers.get(conv.id) ?? []).join(', ')
          : presenceText(s, conv.id);
      const who = conv ? s.typingIn(conv.id) : undefined;
      $('typing').textContent = who ? `${who} is typing…` : '';
      drawConversation(s, conv, this.media);
    });
  }

  private readonly media: MediaView = {
    fullImage: (m, show) => {
      this.url(m).then(show, (e) => this.showError(e));
    },
    open: (m) => {
      this.url(m).then((u) => window.open(u, '_blank', 'noopener'), (e) => this.showError(e));
    },
  };

  /// A download URL for a message's file: its own inbox seq, or 0 for a file this user sent.
  private async url(m: ChatMessage): Promise<string> {
    const id = m.attachment?.mediaId ?? '';
    const cached = this.urls.get(id);
    if (cached) return cached;
    const u = await this.client.downloadUrl(id, m.mine ? 0 : (m.seq ?? 0));
    this.urls.set(id, u);
    return u;
  }

  private bindForms(): void {
    const c = this.client;
    for (const ev of ['keydown', 'pointerdown', 'focus'] as const) {
      window.addEventListener(ev, () => c.markActive(), { passive: true });
    }
    document.addEventListener('visibilitychange', () => this.markRead());
    $('older').addEventListener('click', () => {
      this.loadHistory().catch((e) => this.showError(e));
    });
    $('new-chat-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const input = $<HTMLInputElement>('new-chat');
      const id = input.value.trim();
      if (!id) return;
      if (id === c.user) return this.showError(new Error('that is you'));
      input.value = '';
      this.store.conversation(id, 'direct');
      this.open(id);
    });
    $('new-group-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const name = $<HTMLInputElement>('group-name');
      const members = $<HTMLInputElement>('group-members');
      const users = members.value.split(',').map((x) => x.trim()).filter(Boolean);
      if (!name.value.trim()) return;
      c.createGroup(name.value.trim(), users).then(
        (info) => {
          name.value = '';
          members.value = '';
          this.store.conversation(info.group, 'group', info.name);
          this.groupMembers.set(info.group, info.members.map((m) => m.user));
          this.open(info.group);
        },
        (err) => this.showError(err),
      );
    });
    $('add-member-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const input = $<HTMLInputElement>('add-member');
      const group = this.store.open;
      const user = input.value.trim();
      if (!group || !user) return;
      c.addMembers(group, [user]).then(
        (info) => {
          input.value = '';
          this.groupMembers.set(group, info.members.map((m) => m.user));
          this.draw();
        },
        (err) => this.showError(err),
      );
    });
    const text = $<HTMLInputElement>('text');
    text.addEventListener('input', () => this.typed(text.value !== ''));
    $('composer').addEventListener('submit', (e) => {
      e.preventDefault();
      const body = text.value;
      if (!body.trim()) return;
      text.value = '';
      this.typed(false);
      this.send(body);
    });
    const attach = $<HTMLInputElement>('attach');
    attach.addEventListener('change', () => {
      const file = attach.files?.[0];
      attach.value = '';
      if (file) void this.sendFile(file, text.value);
      text.value = '';
    });
  }

  private target(): { to?: string; group?: string } | undefined {
    const conv = this.store.open ? this.store.conversations.get(this.store.open) : undefined;
    if (!conv) return undefined;
    return conv.kind === 'group' ? { group: conv.id } : { to: conv.id };
  }

  /// Typing notices: one now and one every few seconds while the user types; STOPPED when the
  /// field is cleared or the message goes.
  private typed(typing: boolean): void {
    const t = this.target();
    if (!t) return;
    const now = Date.now();
    if (typing && now - this.typingSentAt < TYPING_REPEAT_MS) return;
    if (!typing && this.typingSentAt === 0) return;
    this.typingSentAt = typing ? now : 0;
    this.client.typing(t, typing);
  }

  private send(body: string, attachment?: Parameters<ChatClient['send']>[0]['attachment']): void {
    const t = this.target();
    const convId = this.store.open;
    if (!t || !convId) return;
    const kind = t.group ? 'group' : 'direct';
    let p: PendingSend;
    try {
      p = this.client.send({ ...t, body, attachment });
    } catch (e) {
      return this.showError(e);
    }
    this.store.addOutgoing(convId, kind, p.clientMsgId, body, attachment);
    // The ✓ comes as the client's `sent` event (handled in `listen`); only a refusal here.
    p.sent.catch((e: unknown) => {
      this.store.onSendFailed(p.clientMsgId, e instanceof Error ? e.message : String(e));
      this.showError(e);
      this.draw();
    });
    this.afterChange();
  }

  private async sendFile(file: File, caption: string): Promise<void> {
    try {
      const max = this.client.welcome?.limits?.maxThumbnailBytes ?? 0;
      const thumb = await thumbnail(file, max);
      const att = await this.client.uploadFile(file, file.type || 'application/octet-stream', { name: file.name, thumbnail: thumb });
      this.send(caption, att);
    } catch (e) {
      this.showError(e);
    }
  }

  private showError(e: unknown): void {
    const msg = e instanceof ChatError ? `${e.code}: ${e.message}` : e instanceof Error ? e.message : String(e);
    $('conv-error').textContent = msg;
  }

  close(): void {
    this.client.close();
  }
}
