// Drawing the store on the page. Elements are kept per message (by key) and updated in place, so
// a tick that changes does not reload images or move the reader's scroll position.

import { toBase64 } from '@chat/client';
import type { ConnState } from '@chat/client';
import type { ChatMessage, Conversation, Store, Tick } from './store.js';

export const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from the page`);
  return el as T;
};

const TICK_TEXT: Record<Tick, [string, string]> = {
  pending: ['…', 'sending'],
  sent: ['✓', 'sent'],
  delivered: ['✓✓', 'delivered'],
  read: ['✓✓', 'read'],
  failed: ['!', 'not sent'],
};

const CONN_TEXT: Record<ConnState, string> = {
  idle: 'not connected',
  connecting: 'connecting…',
  open: 'connected',
  reconnecting: 'reconnecting…',
  closed: 'disconnected',
};

export function showConn(state: ConnState, detail?: string): void {
  const el = $('conn');
  el.dataset.state = state;
  el.textContent = detail ? `${CONN_TEXT[state]} (${detail})` : CONN_TEXT[state];
}

const time = (ts: number) => new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

function lastSeenText(ms: number): string {
  if (!ms) return '';
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return `last seen ${today ? 'today' : d.toLocaleDateString()} at ${time(ms)}`;
}

export function presenceText(store: Store, user: string): string {
  const p = store.presence.get(user);
  if (!p) return '';
  return p.online ? 'online' : lastSeenText(p.lastSeenMs);
}

interface ListItem {
  li: HTMLLIElement;
  title: HTMLSpanElement;
  preview: HTMLSpanElement;
  badge: HTMLSpanElement;
}

const listed = new Map<string, ListItem>();

/// The conversation list: one button per conversation, with its unread count. Items are kept
/// and updated in place, so a redraw does not take the keyboard focus away from one.
export function drawList(store: Store, onOpen: (id: string) => void): void {
  const ul = $('conversations');
  const keep = new Set<string>();
  for (const c of store.sorted()) {
    keep.add(c.id);
    let item = listed.get(c.id);
    if (!item) {
      item = newListItem(c, onOpen);
      listed.set(c.id, item);
    }
    item.li.setAttribute('aria-current', String(store.open === c.id));
    item.title.textContent = c.title;
    const last = c.messages[c.messages.length - 1];
    item.preview.textContent = last ? last.body || (last.attachment ? 'attachment' : '') : '';
    item.badge.hidden = c.unread === 0;
    item.badge.textContent = String(c.unread);
    item.badge.setAttribute('aria-label', `${c.unread} unread`);
    ul.append(item.li); // moves it to its place in order
  }
  for (const [id, item] of listed) {
    if (!keep.has(id)) {
      item.li.remove();
      listed.delete(id);
    }
  }
}

function newListItem(c: Conversation, onOpen: (id: string) => void): ListItem {
  const li = document.createElement('li');
  li.dataset.conv = c.id;
  li.dataset.kind = c.kind;
  const b = document.createElement('button');
  b.type = 'button';
  const text = document.createElement('span');
  const title = document.createElement('span');
  title.className = 'title';
  const preview = document.createElement('span');
  preview.className = 'preview';
  text.append(title, preview);
  const badge = document.createElement('span');
  badge.className = 'unread';
  b.append(text, badge);
  b.addEventListener('click', () => onOpen(c.id));
  li.append(b);
  return { li, title, preview, badge };
}

/// How a message's file is shown: its thumbnail at once, the image itself once its URL is known.
export interface MediaView {
  /// Asks for a download URL (signed, short-lived) and calls back with it.
  fullImage(m: ChatMessage, show: (url: string) => void): void;
  open(m: ChatMessage): void;
}

const drawn = new Map<string, HTMLLIElement>();

export function drawConversation(store: Store, c: Conversation | undefined, media: MediaView): void {
  const ol = $('messages');
  if (!c) {
    ol.replaceChildren();
    drawn.clear();
    return;
  }
  if (ol.dataset.conv !== c.id) {
    ol.replaceChildren();
    drawn.clear();
    ol.dataset.conv = c.id;
  }
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  const keep = new Set<string>();
  for (const m of c.messages) {
    keep.add(m.key);
    let li = drawn.get(m.key);
    if (!li) {
      li = newMessage(c, m, media);
      drawn.set(m.key, li);
    }
    updateMessage(li, m);
    ol.append(li); // moves it to its place in order
  }
  for (const [key, li] of drawn) {
    if (!keep.has(key)) {
      li.remove();
      drawn.delete(key);
    }
  }
  if (atBottom) ol.scrollTop = ol.scrollHeight;
}

function newMessage(c: Conversation, m: ChatMessage, media: MediaView): HTMLLIElement {
  const li = document.createElement('li');
  li.className = m.system ? 'msg system' : m.mine ? 'msg mine' : 'msg';
  if (c.kind === 'group' && !m.mine && !m.system) {
    const from = document.createElement('span');
    from.className = 'from';
    from.textContent = m.from;
    li.append(from);
  }
  const a = m.attachment;
  if (a) {
    const isImage = (a.mime ?? '').startsWith('image/');
    if (a.thumbnail && a.thumbnail.length > 0) {
      const img = document.createElement('img');
      img.className = 'thumb';
      img.alt = `preview of ${a.name || 'an image'}`;
      img.src = `data:image/jpeg;base64,${toBase64(a.thumbnail)}`;
      li.append(img);
    }
    if (isImage) {
      media.fullImage(m, (url) => {
        const full = document.createElement('img');
        full.className = 'full';
        full.alt = a.name || 'image';
        full.src = url;
        li.querySelector('img.thumb')?.remove();
        li.querySelector('.body')?.before(full);
      });
    } else {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'file';
      b.textContent = `Download ${a.name || 'file'}`;
      b.addEventListener('click', () => media.open(m));
      li.append(b);
    }
  }
  const body = document.createElement('span');
  body.className = 'body';
  li.append(body);
  const meta = document.createElement('span');
  meta.className = 'meta';
  li.append(meta);
  return li;
}

function updateMessage(li: HTMLLIElement, m: ChatMessage): void {
  if (m.msgId) li.dataset.msgId = m.msgId;
  if (m.clientMsgId) li.dataset.clientId = m.clientMsgId;
  (li.querySelector('.body') as HTMLElement).textContent = m.body;
  const meta = li.querySelector('.meta') as HTMLElement;
  if (m.system) {
    meta.textContent = '';
    return;
  }
  meta.textContent = time(m.ts);
  if (m.mine && m.tick) {
    const [text, label] = TICK_TEXT[m.tick];
    const tick = document.createElement('span');
    tick.className = 'tick';
    tick.dataset.tick = m.tick;
    tick.textContent = ` ${text}`;
    tick.setAttribute('aria-label', label);
    tick.title = m.error ?? label;
    meta.append(tick);
  }
}
