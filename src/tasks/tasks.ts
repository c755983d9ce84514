/**
 * Every director action is a task: a numeric id, a state, events (stage, instance, state, time)
 * and one log per VM holding the full output of every remote command. All of it lives in the
 * state DB, written as it happens, so a task's record survives the process that ran it.
 */
import type { Db } from '../state/db.js';
import { userError, type DirectorError } from '../errors.js';

export type TaskState = 'queued' | 'processing' | 'done' | 'error' | 'cancelling' | 'cancelled' | 'timeout';

export interface TaskRow {
  id: number;
  type: string;
  deployment: string | null;
  state: TaskState;
  description: string;
  pid: number | null;
  startedAt: string;
  endedAt: string | null;
  result: string | null;
  error: TaskError | null;
}

export interface TaskError {
  code: string;
  class: string;
  message: string;
  instance?: string;
  step?: string;
  hint?: string;
  logTail?: string[];
  /** what the automatic rollback did, when one ran */
  rollback?: { rolledBack: string[]; failed: string[]; notRestorable: { instance: string; reason: string }[] };
}

export interface EventRow {
  id: number;
  taskId: number;
  ts: string;
  stage: string;
  instance: string | null;
  state: string;
  message: string | null;
  data: Record<string, unknown> | null;
}

export interface LogRow {
  id: number;
  taskId: number;
  instance: string;
  ts: string;
  stream: string;
  line: string;
}

type Raw = Record<string, unknown>;

const toTask = (r: Raw): TaskRow => ({
  id: r.id as number,
  type: r.type as string,
  deployment: (r.deployment as string | null) ?? null,
  state: r.state as TaskState,
  description: r.description as string,
  pid: (r.pid as number | null) ?? null,
  startedAt: r.started_at as string,
  endedAt: (r.ended_at as string | null) ?? null,
  result: (r.result as string | null) ?? null,
  error: r.error ? (JSON.parse(r.error as string) as TaskError) : null,
});

export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class Tasks {
  constructor(private readonly db: Db, private readonly now: () => Date = () => new Date()) {}

  private ts(): string {
    return this.now().toISOString();
  }

  create(type: string, deployment: string | null, description: string): number {
    const info = this.db
      .prepare(`INSERT INTO tasks (type, deployment, state, description, pid, started_at) VALUES (?, ?, 'processing', ?, ?, ?)`)
      .run(type, deployment, description, process.pid, this.ts());
    return Number(info.lastInsertRowid);
  }

  /** `director cancel N`: the running director sees it before starting its next instance. */
  requestCancel(id: number): TaskRow {
    const task = this.get(id);
    if (!task) throw userError('task_unknown', `no task ${id}`, { hint: 'director tasks lists them' });
    if (task.state !== 'processing') throw userError('task_not_running', `task ${id} is ${task.state}; only a processing task can be cancelled`);
    this.db.prepare(`UPDATE tasks SET state = 'cancelling' WHERE id = ? AND state = 'processing'`).run(id);
    return this.get(id)!;
  }

  isCancelRequested(id: number): boolean {
    return (this.db.prepare('SELECT state FROM tasks WHERE id = ?').get(id) as { state?: string } | undefined)?.state === 'cancelling';
  }

  setDeployment(id: number, deployment: string): void {
    this.db.prepare('UPDATE tasks SET deployment = ?, description = ? WHERE id = ?').run(deployment, `deploy ${deployment}`, id);
  }

  finish(id: number, state: TaskState, result: string | null, error: TaskError | null = null): void {
    this.db.prepare('UPDATE tasks SET state = ?, result = ?, error = ?, ended_at = ? WHERE id = ?').run(state, result, error ? JSON.stringify(error) : null, this.ts(), id);
  }

  get(id: number): TaskRow | null {
    const r = this.db.prepare('SELECT * FROM tasks WHERE id = ?').get(id) as Raw | undefined;
    return r ? toTask(r) : null;
  }

  /** Newest first; `state` keeps only tasks in that state (or any of those states). */
  list(opts: { deployment?: string; state?: TaskState | TaskState[]; limit?: number } = {}): TaskRow[] {
    const conds: string[] = [];
    const args: unknown[] = [];
    if (opts.deployment) {
      conds.push('deployment = ?');
      args.push(opts.deployment);
    }
    const states = opts.state === undefined ? [] : Array.isArray(opts.state) ? opts.state : [opts.state];
    if (states.length) {
      conds.push(`state IN (${states.map(() => '?').join(', ')})`);
      args.push(...states);
    }
    const where = conds.length ? `WHERE ${conds.join(' AND ')}` : '';
    return (this.db.prepare(`SELECT * FROM tasks ${where} ORDER BY id DESC LIMIT ?`).all(...args, opts.limit ?? 30) as Raw[]).map(toTask);
  }

  /**
   * Tasks left `processing` by a director that died (kill -9, power cut) are closed as errors,
   * keeping their events and logs, so the record says what happened instead of running forever.
   */
  closeAbandoned(): TaskRow[] {
    const open = (this.db.prepare(`SELECT * FROM tasks WHERE state IN ('processing', 'cancelling', 'queued')`).all() as Raw[]).map(toTask);
    const dead = open.filter((t) => t.pid === null || (t.pid !== process.pid && !isProcessAlive(t.pid)));
    for (const t of dead) {
      this.addEvent(t.id, 'task', null, 'failed', `the director running this task (pid ${t.pid}) stopped before finishing it`);
      this.finish(t.id, 'error', null, { code: 'director_died', class: 'internal', message: `the director process (pid ${t.pid}) died while the task was running`, hint: 'run the same command again: it re-checks the instances and converges' });
    }
    return dead;
  }

  addEvent(taskId: number, stage: string, instance: string | null, state: string, message: string | null = null, data: Record<string, unknown> | null = null): EventRow {
    const ts = this.ts();
    const info = this.db
      .prepare('INSERT INTO events (task_id, ts, stage, instance, state, message, data) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(taskId, ts, stage, instance, state, message, data ? JSON.stringify(data) : null);
    return { id: Number(info.lastInsertRowid), taskId, ts, stage, instance, state, message, data };
  }

  events(taskId: number, afterId = 0): EventRow[] {
    return (this.db.prepare('SELECT * FROM events WHERE task_id = ? AND id > ? ORDER BY id').all(taskId, afterId) as Raw[]).map((r) => ({
      id: r.id as number,
      taskId: r.task_id as number,
      ts: r.ts as string,
      stage: r.stage as string,
      instance: (r.instance as string | null) ?? null,
      state: r.state as string,
      message: (r.message as string | null) ?? null,
      data: r.data ? (JSON.parse(r.data as string) as Record<string, unknown>) : null,
    }));
  }

  addLogLines(taskId: number, instance: string, stream: string, lines: string[]): void {
    if (lines.length === 0) return;
    const ts = this.ts();
    const insert = this.db.prepare('INSERT INTO task_logs (task_id, instance, ts, stream, line) VALUES (?, ?, ?, ?, ?)');
    this.db.transaction(() => {
      for (const line of lines) insert.run(taskId, instance, ts, stream, line);
    })();
  }

  logs(taskId: number, instance?: string, afterId = 0): LogRow[] {
    const rows = instance
      ? this.db.prepare('SELECT * FROM task_logs WHERE task_id = ? AND instance = ? AND id > ? ORDER BY id').all(taskId, instance, afterId)
      : this.db.prepare('SELECT * FROM task_logs WHERE task_id = ? AND id > ? ORDER BY id').all(taskId, afterId);
    return (rows as Raw[]).map((r) => ({ id: r.id as number, taskId: r.task_id as number, instance: r.instance as string, ts: r.ts as string, stream: r.stream as string, line: r.line as string }));
  }

  /** Wall times (ms) of the last `limit` instance updates that finished in a deployment's tasks. */
  recentInstanceDurations(deployment: string, limit = 100): number[] {
    const rows = this.db
      .prepare(
        `SELECT e.data FROM events e JOIN tasks t ON t.id = e.task_id
         WHERE t.deployment = ? AND e.stage = 'update' AND e.state = 'finished' AND e.data IS NOT NULL
         ORDER BY e.id DESC LIMIT ?`,
      )
      .all(deployment, limit) as Raw[];
    return rows.map((r) => Number((JSON.parse(r.data as string) as { durationMs?: unknown }).durationMs)).filter((n) => Number.isFinite(n) && n >= 0);
  }

  logInstances(taskId: number): string[] {
    return (this.db.prepare('SELECT DISTINCT instance FROM task_logs WHERE task_id = ? ORDER BY instance').all(taskId) as Raw[]).map((r) => r.instance as string);
  }
}

export function taskErrorOf(err: DirectorError, extra: Partial<TaskError> = {}): TaskError {
  return { code: err.code, class: err.errorClass, message: err.message, hint: err.hint, ...extra };
}
