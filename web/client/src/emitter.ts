// A tiny typed event emitter. A listener that throws does not stop the others, nor the client:
// its error is reported (reportError where the platform has it, else console.error).

export class Emitter<E extends object> {
  private listeners = new Map<keyof E, Set<(arg: never) => void>>();

  on<K extends keyof E>(ev: K, fn: (arg: E[K]) => void): () => void {
    let set = this.listeners.get(ev);
    if (!set) {
      set = new Set();
      this.listeners.set(ev, set);
    }
    set.add(fn as (arg: never) => void);
    return () => {
      set.delete(fn as (arg: never) => void);
    };
  }

  emit<K extends keyof E>(ev: K, arg: E[K]): void {
    const set = this.listeners.get(ev);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as (arg: E[K]) => void)(arg);
      } catch (e) {
        report(e);
      }
    }
  }
}

function report(e: unknown): void {
  const g = globalThis as { reportError?: (e: unknown) => void };
  if (typeof g.reportError === 'function') g.reportError(e);
  else console.error(e);
}
