// Entry point: sign in (a development token from the router, or a pasted one), then the chat
// page. The token and this browser's device id are kept in localStorage, so a reload resumes.

import { ChatClient } from '@chat/client';
import { ChatPage } from './chat.js';
import { $ } from './view.js';

const TOKEN_KEY = 'chat.token';
const DEVICE_KEY = 'chat.device';

/// This browser's device id: made once, so every tab and reload is the same device.
function deviceId(): string {
  let d = localStorage.getItem(DEVICE_KEY);
  if (!d) {
    const rand = crypto.getRandomValues(new Uint8Array(6));
    d = `web-${[...rand].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
    localStorage.setItem(DEVICE_KEY, d);
  }
  return d;
}

/// A development token from the router (`POST /dev/token`, on only when the router is run with
/// `web.dev_token_secret_file`).
async function devToken(user: string): Promise<string> {
  const r = await fetch('/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user, device: deviceId() }),
  });
  if (r.status === 404 || r.status === 405) {
    throw new Error('this router issues no development tokens: paste a token instead');
  }
  const body = (await r.json().catch(() => ({}))) as { token?: string; message?: string };
  if (!r.ok || !body.token) throw new Error(body.message ?? `the router answered ${r.status}`);
  return body.token;
}

async function signIn(token: string): Promise<void> {
  const client = new ChatClient({ router: location.origin, token, agent: 'chat-web/0.1' });
  localStorage.setItem(TOKEN_KEY, token);
  $('signin').hidden = true;
  $('app').hidden = false;
  const page = new ChatPage(client);
  $('signout').addEventListener('click', () => {
    page.close();
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  await page.start();
}

function signInFailed(e: unknown): void {
  localStorage.removeItem(TOKEN_KEY);
  $('app').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = e instanceof Error ? e.message : String(e);
}

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const user = $<HTMLInputElement>('user').value.trim();
  $('signin-error').textContent = '';
  devToken(user).then(signIn).catch(signInFailed);
});
$('token-signin').addEventListener('click', () => {
  const token = $<HTMLTextAreaElement>('token').value.trim();
  if (token) signIn(token).catch(signInFailed);
});

const saved = localStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved).catch(signInFailed);
