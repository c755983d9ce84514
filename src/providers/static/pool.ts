/**
 * Which static hosts are assigned to which instance: `<home>/static/<cloud>.json`.
 *
 * Every change is read-modify-write under an exclusive lock file (two director processes may
 * deploy two deployments onto one pool at once) and written to a temp file then renamed, so a
 * reader never sees half a file and a crash leaves the previous version.
 */
import { mkdirSync, openSync, closeSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { infraError } from '../../errors.js';

export interface Assignment {
  cid: string;
  address: string;
  port: number;
  user: string;
  baseDir: string;
  az: string;
  tags: Record<string, string>;
  assignedAt: string;
}

export interface PoolState {
  version: 1;
  /** by cid */
  assignments: Record<string, Assignment>;
  /** host keys seen on first contact, by cid; kept across assignments so a changed key is refused */
  hostKeys: Record<string, string>;
}

const LOCK_STALE_MS = 30_000;
const LOCK_WAIT_MS = 60_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class PoolFile {
  readonly file: string;
  private readonly lockFile: string;
  /** in-process serialization; the lock file serializes between processes */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(home: string, cloud: string) {
    const dir = join(home, 'static');
    this.file = join(dir, `${cloud}.json`);
    this.lockFile = `${this.file}.lock`;
  }

  read(): PoolState {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, assignments: {}, hostKeys: {} };
      throw e;
    }
    try {
      const s = JSON.parse(text) as Partial<PoolState>;
      return { version: 1, assignments: s.assignments ?? {}, hostKeys: s.hostKeys ?? {} };
    } catch (e) {
      throw infraError('static_state_corrupt', `cannot read ${this.file}: ${(e as Error).message}`, {
        hint: 'The file records which hosts are assigned; restore it from a backup, or delete it and let the director re-read the assignment markers (.director-assignment) on the hosts.',
        cause: e,
      });
    }
  }

  /** Runs `fn` on the current state under the lock; what it returns is written back if it changed. */
  update<T>(fn: (s: PoolState) => T): Promise<T> {
    const next = this.chain.then(() => this.locked(fn));
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async locked<T>(fn: (s: PoolState) => T): Promise<T> {
    mkdirSync(join(this.file, '..'), { recursive: true, mode: 0o700 });
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (;;) {
      try {
        closeSync(openSync(this.lockFile, 'wx', 0o600));
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        try {
          // A director killed while holding the lock leaves it behind; changes take milliseconds.
          if (Date.now() - statSync(this.lockFile).mtimeMs > LOCK_STALE_MS) unlinkSync(this.lockFile);
        } catch {
          // removed by its holder meanwhile
        }
        if (Date.now() > deadline) throw infraError('static_state_locked', `${this.lockFile} stayed locked for ${LOCK_WAIT_MS / 1000} s`, { hint: 'another director process holds it; if none runs, remove the file' });
        await sleep(5 + Math.random() * 20);
      }
    }
    try {
      const state = this.read();
      const before = JSON.stringify(state);
      const result = fn(state);
      const after = JSON.stringify(state, null, 2);
      if (JSON.stringify(state) !== before) {
        const tmp = `${this.file}.${process.pid}.tmp`;
        writeFileSync(tmp, after, { mode: 0o600 });
        renameSync(tmp, this.file);
      }
      return result;
    } finally {
      try {
        unlinkSync(this.lockFile);
      } catch {
        // already gone (treated as stale by another process): nothing to release
      }
    }
  }
}
