/**
 * The read-side views: `deployments`, `instances`, `events` and the pieces of `task N` that are not
 * the summary. Each `*View` function gathers one plain, JSON-printable value from the stores;
 * each `render*` function turns that value into text. `--json` prints the value itself.
 */
import { userError } from '../errors.js';
import type { Store } from '../state/store.js';
import type { LogRow, TaskRow, TaskState, Tasks } from '../tasks/tasks.js';
import { formatDuration, table } from './render.js';

export const TASK_STATES: readonly TaskState[] = ['queued', 'processing', 'done', 'error', 'cancelling', 'cancelled', 'timeout'];

/** `--state error` or `--state error,timeout`. */
export function parseStates(text: string): TaskState[] {
  const states = text.split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of states) {
    if (!TASK_STATES.includes(s as TaskState)) {
      throw userError('task_state_unknown', `unknown task state '${s}'`, { hint: `states: ${TASK_STATES.join(', ')}` });
    }
  }
  if (states.length === 0) throw userError('task_state_unknown', '--state needs a state', { hint: `states: ${TASK_STATES.join(', ')}` });
  return states as TaskState[];
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** `--since`: an ISO time (`2026-01-31T03:00:00Z`, `2026-01-31`) or a duration back from now (`2h`, `30m`, `1h30m`, `7d`). */
export function parseSince(text: string, now: Date): Date {
  const t = text.trim();
  if (/^(\d+(\.\d+)?(ms|s|m|h|d|w))+$/.test(t)) {
    let ms = 0;
    for (const m of t.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/g)) ms += Number(m[1]) * UNIT_MS[m[2]!]!;
    return new Date(now.getTime() - ms);
  }
  if (/^\d{4}-\d\d-\d\d/.test(t)) {
    const at = Date.parse(t);
    if (!Number.isNaN(at)) return new Date(at);
  }
  throw userError('since_malformed', `--since '${text}' is neither an ISO time nor a duration`, { hint: 'write e.g. --since 2h, --since 30m, --since 1h30m or --since 2026-01-31T03:00:00Z' });
}

// ---------------------------------------------------------------------------------------------
// task N: outcome, logs

/** The lines that close a live view of a task: on stdout when it is done, on stderr otherwise. */
export function renderOutcome(task: TaskRow, durationMs: number): { out: string[]; err: string[] } {
  if (task.state === 'done') return { out: ['', `Task ${task.id} done in ${formatDuration(durationMs)}: ${task.result ?? ''}`], err: [] };
  const err = ['', `Task ${task.id} ${task.state}: ${task.error?.message ?? task.result ?? ''}`];
  if (task.error?.instance || task.error?.step) err.push(`failed: ${[task.error.instance, task.error.step && `at ${task.error.step}`, task.error.class && `(${task.error.class})`].filter(Boolean).join(' ')}`);
  if (task.error?.logTail?.length) err.push('last output:', ...task.error.logTail.map((l) => `  ${l}`));
  if (task.error?.hint) err.push(`hint: ${task.error.hint}`);
  return { out: [], err };
}

export function taskDurationMs(task: TaskRow, now = Date.now()): number {
  return (task.endedAt ? Date.parse(task.endedAt) : now) - Date.parse(task.startedAt);
}

/** One log line, as `task N --vm` prints it. */
export function renderLogLine(l: LogRow): string {
  return `${l.ts} ${l.stream === 'director' ? '--' : l.stream === 'stderr' ? 'E ' : '  '} ${l.line}`;
}

/** `task N --debug`: every VM's log, interleaved in the order written, each line prefixed with its instance. */
export function renderDebugLine(l: LogRow, width: number): string {
  return `${l.instance.padEnd(width)}  ${renderLogLine(l)}`;
}

// ---------------------------------------------------------------------------------------------
// events: who did what when, across tasks

export interface HistoryEvent {
  ts: string;
  taskId: number;
  taskType: string;
  deployment: string | null;
  /** `task` for the task's own start and end; otherwise the stage of a stage-level event */
  stage: string;
  state: string;
  message: string | null;
  /** the event's id; null for the task start/end lines, which come from the task record */
  eventId: number | null;
  /** the director process that ran the task */
  pid: number | null;
}

/**
 * Task-level history: each task's start and end (from its record) and its stage-level events
 * (instance null), newest `limit` lines, oldest first. Tasks are read newest first and a task's
 * events are loaded only while it can still hold one of the newest `limit` lines (it ended after
 * the oldest line kept so far, or has not ended).
 */
export function eventsView(tasks: Tasks, opts: { deployment?: string; since?: Date; limit: number }): { events: HistoryEvent[]; truncated: boolean } {
  const since = opts.since?.toISOString() ?? '';
  const lines: HistoryEvent[] = [];
  let truncated = false;
  for (const t of tasks.list({ deployment: opts.deployment, limit: -1 })) {
    if (t.endedAt && t.endedAt < since) continue;
    if (t.endedAt && lines.length >= opts.limit && t.endedAt < lines[0]!.ts) {
      truncated = true;
      continue;
    }
    const base = { taskId: t.id, taskType: t.type, deployment: t.deployment, pid: t.pid };
    const own: HistoryEvent[] = [{ ...base, ts: t.startedAt, stage: 'task', state: 'started', message: t.description, eventId: null }];
    for (const e of tasks.events(t.id)) {
      if (e.instance === null) own.push({ ...base, ts: e.ts, stage: e.stage, state: e.state, message: e.message, eventId: e.id });
    }
    if (t.endedAt) own.push({ ...base, ts: t.endedAt, stage: 'task', state: t.state, message: t.error?.message ?? t.result, eventId: null });
    lines.push(...own.filter((l) => l.ts >= since));
    if (lines.length >= opts.limit) {
      lines.sort(byTime);
      if (lines.length > opts.limit) {
        truncated = true;
        lines.splice(0, lines.length - opts.limit);
      }
    }
  }
  return { events: lines.sort(byTime), truncated };
}

const byTime = (a: HistoryEvent, b: HistoryEvent) => (a.ts < b.ts ? -1 : a.ts > b.ts ? 1 : a.taskId - b.taskId || (a.eventId ?? (a.state === 'started' ? -1 : 1e15)) - (b.eventId ?? (b.state === 'started' ? -1 : 1e15)));

export function renderHistory(events: HistoryEvent[]): string {
  if (events.length === 0) return 'No events.';
  return table([
    ['TIME', 'TASK', 'DEPLOYMENT', 'EVENT', 'MESSAGE'],
    ...events.map((e) => [
      e.ts.replace('T', ' ').slice(0, 19),
      String(e.taskId),
      e.deployment ?? '-',
      `${e.stage} ${e.state === 'failed' ? 'FAILED' : e.state}`,
      (e.stage === 'task' && e.state === 'started' ? `${e.message ?? ''}${e.pid ? ` (pid ${e.pid})` : ''}` : e.message ?? '').split('\n')[0]!,
    ]),
  ]);
}

// ---------------------------------------------------------------------------------------------
// deployments, instances

export interface DeploymentSummary {
  name: string;
  instances: number;
  running: number;
  failed: number;
  /** the newest task of the deployment, any type */
  lastTask: { id: number; type: string; state: TaskState; startedAt: string; endedAt: string | null } | null;
  updatedAt: string;
}

export function deploymentsView(store: Store, tasks: Tasks): DeploymentSummary[] {
  return store.deployments().map((d) => {
    const rows = store.instances(d.name);
    const last = tasks.list({ deployment: d.name, limit: 1 })[0];
    return {
      name: d.name,
      instances: rows.length,
      running: rows.filter((r) => r.state === 'running').length,
      failed: rows.filter((r) => r.state === 'failed').length,
      lastTask: last ? { id: last.id, type: last.type, state: last.state, startedAt: last.startedAt, endedAt: last.endedAt } : null,
      updatedAt: d.updatedAt,
    };
  });
}

export function renderDeployments(list: DeploymentSummary[]): string {
  if (list.length === 0) return 'No deployments.';
  return table([
    ['NAME', 'INSTANCES', 'RUNNING', 'FAILED', 'LAST TASK', 'UPDATED'],
    ...list.map((d) => [
      d.name,
      String(d.instances),
      String(d.running),
      String(d.failed),
      d.lastTask ? `${d.lastTask.id} ${d.lastTask.type} ${d.lastTask.state}` : '-',
      d.updatedAt.replace('T', ' ').slice(0, 19),
    ]),
  ]);
}

export interface InstanceSummary {
  instance: string;
  id: string;
  /** as the director recorded it; `director vms` checks the VMs live */
  state: string;
  az: string;
  cloud: string;
  cid: string | null;
  ips: string[];
  version: string | null;
  error: string | null;
  updatedAt: string;
  /** live, unless --no-health: healthy | failing | drifted | unresponsive | missing */
  health?: string;
  healthDetail?: string;
}

export function instancesView(store: Store, deployment: string): InstanceSummary[] {
  if (!store.deployment(deployment)) {
    const known = store.deployments().map((d) => d.name);
    throw userError('deployment_unknown', `no deployment named '${deployment}'`, { hint: known.length ? `deployments: ${known.join(', ')}` : 'there are no deployments' });
  }
  return store.instances(deployment).map((r) => {
    const job = r.applied?.jobs[0];
    const vm = r.vmCid ? store.vm(r.cloud, r.vmCid) : null;
    return {
      instance: `${r.group}/${r.index}`,
      id: r.id,
      state: r.state,
      az: r.az,
      cloud: r.cloud,
      cid: r.vmCid,
      ips: vm?.ips ?? [],
      version: job ? `${job.release}/${job.version.slice(0, 12)}` : null,
      error: r.error,
      updatedAt: r.updatedAt,
    };
  });
}

export function renderInstances(list: InstanceSummary[]): string {
  if (list.length === 0) return 'No instances.';
  const withError = list.some((i) => i.error || i.healthDetail);
  const withHealth = list.some((i) => i.health);
  return table([
    ['INSTANCE', 'STATE', ...(withHealth ? ['HEALTH'] : []), 'AZ', 'CLOUD', 'VM CID', 'VERSION', 'UPDATED', ...(withError ? ['DETAIL'] : [])],
    ...list.map((i) => [
      i.instance, i.state, ...(withHealth ? [i.health ?? '-'] : []), i.az, i.cloud, i.cid ?? '-', i.version ?? '-', i.updatedAt.replace('T', ' ').slice(0, 19),
      ...(withError ? [i.healthDetail || i.error || ''] : []),
    ]),
  ]);
}
