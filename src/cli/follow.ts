/**
 * `director task N --follow`: tails a task from the state DB, in any process. The DB is in WAL
 * mode, so this reader never blocks the director that writes; every poll is a fresh read that
 * sees every commit made before it. Rows are fetched by id (`events(task, afterId)`,
 * `logs(task, vm, afterId)`), so nothing is printed twice and nothing is skipped.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { EventRow, LogRow, TaskRow, TaskState, Tasks } from '../tasks/tasks.js';

const FINAL: ReadonlySet<TaskState> = new Set(['done', 'error', 'cancelled', 'timeout']);

export const isFinalState = (s: TaskState) => FINAL.has(s);

export interface FollowSinks {
  event(e: EventRow): void;
  /** log rows of the followed instance (`--vm`) or of every instance (`--debug`) */
  log?(l: LogRow): void;
}

export interface FollowOptions {
  /** which log rows to stream: none, one instance's, or every instance's */
  logs: { vm: string } | 'all' | 'none';
  intervalMs?: number;
  /** how often to check that the director running the task is still alive */
  aliveCheckMs?: number;
  signal?: AbortSignal;
}

/**
 * Streams the task's rows to `sinks` until the task reaches a final state, then returns its
 * final record. A task whose director died is closed as an error (closeAbandoned), so a
 * follower never waits forever on a kill -9.
 */
export async function followTask(tasks: Tasks, taskId: number, sinks: FollowSinks, opts: FollowOptions): Promise<TaskRow> {
  const interval = opts.intervalMs ?? 200;
  const aliveEvery = opts.aliveCheckMs ?? 1000;
  let lastEvent = 0;
  let lastLog = 0;
  let lastAliveCheck = 0;
  const drain = () => {
    for (const e of tasks.events(taskId, lastEvent)) {
      lastEvent = e.id;
      sinks.event(e);
    }
    if (opts.logs === 'none' || !sinks.log) return;
    const rows = opts.logs === 'all' ? tasks.logs(taskId, undefined, lastLog) : tasks.logs(taskId, opts.logs.vm, lastLog);
    for (const l of rows) {
      lastLog = l.id;
      sinks.log(l);
    }
  };
  for (;;) {
    // State first, rows second: when the state read is final, every row written before it is in.
    const task = tasks.get(taskId);
    if (!task) throw new Error(`task ${taskId} disappeared`);
    drain();
    if (FINAL.has(task.state)) {
      // A director may write one last row right after closing the task (delete-deployment does).
      await sleep(interval);
      drain();
      return tasks.get(taskId)!;
    }
    if (opts.signal?.aborted) return task;
    const now = Date.now();
    if (now - lastAliveCheck >= aliveEvery) {
      lastAliveCheck = now;
      tasks.closeAbandoned();
    }
    await sleep(interval, undefined, { signal: opts.signal }).catch(() => undefined);
  }
}
