/**
 * One lock per deployment with a lease the running task renews. A second deploy fails at once and
 * names the holder; a holder that died (its pid is gone on this machine, or its lease ran out)
 * loses the lock, so a kill -9 never leaves a stale lock behind.
 */
import type { Db } from '../state/db.js';
import { userError } from '../errors.js';
import { isProcessAlive } from './tasks.js';

export const DEFAULT_LEASE_MS = 60_000;

export interface LockRow {
  name: string;
  taskId: number;
  pid: number;
  acquiredAt: string;
  expiresAt: string;
}

export class Locks {
  constructor(private readonly db: Db, private readonly now: () => Date = () => new Date()) {}

  acquire(name: string, taskId: number, leaseMs = DEFAULT_LEASE_MS): void {
    const now = this.now();
    this.db.transaction(() => {
      const held = this.get(name);
      if (held && held.taskId !== taskId && new Date(held.expiresAt) > now && isProcessAlive(held.pid)) {
        throw userError('deployment_locked', `${name} is locked by task ${held.taskId} (pid ${held.pid}) since ${held.acquiredAt}`, {
          hint: `wait for it (director task ${held.taskId} --follow) or cancel it (director cancel ${held.taskId})`,
        });
      }
      this.db
        .prepare('INSERT OR REPLACE INTO locks (name, task_id, pid, acquired_at, expires_at) VALUES (?, ?, ?, ?, ?)')
        .run(name, taskId, process.pid, now.toISOString(), new Date(now.getTime() + leaseMs).toISOString());
    }).immediate();
  }

  renew(name: string, taskId: number, leaseMs = DEFAULT_LEASE_MS): void {
    this.db.prepare('UPDATE locks SET expires_at = ? WHERE name = ? AND task_id = ?').run(new Date(this.now().getTime() + leaseMs).toISOString(), name, taskId);
  }

  release(name: string, taskId: number): void {
    this.db.prepare('DELETE FROM locks WHERE name = ? AND task_id = ?').run(name, taskId);
  }

  get(name: string): LockRow | null {
    const r = this.db.prepare('SELECT * FROM locks WHERE name = ?').get(name) as Record<string, unknown> | undefined;
    return r ? { name: r.name as string, taskId: r.task_id as number, pid: r.pid as number, acquiredAt: r.acquired_at as string, expiresAt: r.expires_at as string } : null;
  }

  list(): LockRow[] {
    return (this.db.prepare('SELECT name FROM locks ORDER BY name').all() as Record<string, unknown>[]).map((r) => this.get(r.name as string)!);
  }
}

/**
 * Runs `fn` holding the deployment's lock for `taskId`: closes tasks of dead directors first (so
 * their locks can be taken over), renews the lease while `fn` runs, and always releases.
 */
export async function withDeploymentLock<T>(locks: Locks, tasks: { closeAbandoned(): unknown }, deployment: string, taskId: number, fn: () => Promise<T>): Promise<T> {
  const name = `deployment:${deployment}`;
  tasks.closeAbandoned();
  locks.acquire(name, taskId);
  const renew = setInterval(() => locks.renew(name, taskId), DEFAULT_LEASE_MS / 3);
  renew.unref();
  try {
    return await fn();
  } finally {
    clearInterval(renew);
    locks.release(name, taskId);
  }
}
