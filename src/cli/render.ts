/** Text rendering of plans, events, tasks and VMs. The JSON forms are the same values, printed raw. */
import { describeInstance } from '../plan/describe.js';
import type { Plan } from '../plan/types.js';
import type { EventRow, LogRow, TaskRow } from '../tasks/tasks.js';
import type { VmInfo } from '../app/vms.js';

export function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n');
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function renderPlan(plan: Plan): string {
  const lines: string[] = [];
  const s = plan.summary;
  if (plan.noop) return `Deployment '${plan.deployment}': no changes (${s.none} instance(s) up to date).`;
  const counts = (['create', 'update', 'recreate', 'restart', 'delete'] as const).filter((k) => s[k] > 0).map((k) => `${s[k]} to ${k}`);
  if (plan.strayVms.length) counts.push(`${plan.strayVms.length} stray VM(s) to delete`);
  lines.push(`Deployment '${plan.deployment}': ${counts.join(', ')}${s.none ? `, ${s.none} unchanged` : ''} (ETA ~${formatDuration(plan.etaMs)}${plan.etaBasis === 'history' ? ', from past updates' : ''})`);
  if (plan.strayVms.length) {
    lines.push('', '  delete stray VMs first (left by an interrupted run):');
    lines.push(indent(table(plan.strayVms.map((v) => [v.cid, v.cloud, v.instance ? `was made for ${v.instance}` : 'no instance'])), 4));
  }
  const deletes = plan.instances.filter((i) => i.action === 'delete');
  if (deletes.length) {
    lines.push('', '  delete first:');
    lines.push(indent(table(deletes.map((i) => [i.instance, 'delete', `${i.cloud}/${i.az}`, describeInstance(i)])), 4));
  }
  for (const g of plan.groups) {
    const members = plan.instances.filter((i) => i.group === g.name && i.action !== 'delete');
    lines.push('', `  ${g.name}: canaries ${g.canaries}, max_in_flight ${g.maxInFlight}, ${g.waves.length} wave(s)`);
    const order = new Map(g.order.map((n, i) => [n, i]));
    const sorted = [...members].sort((a, b) => (order.get(a.instance) ?? 1e9) - (order.get(b.instance) ?? 1e9) || a.index - b.index);
    lines.push(indent(table(sorted.map((i) => [
      i.instance,
      i.action,
      `${i.cloud}/${i.az}`,
      i.wave === null ? '-' : i.canary ? 'canary' : `wave ${i.wave}`,
      i.action === 'none' ? 'up to date' : describeInstance(i),
    ])), 4));
  }
  return lines.join('\n');
}

const indent = (text: string, n: number) => text.split('\n').map((l) => ' '.repeat(n) + l).join('\n');

const clock = (iso: string) => iso.slice(11, 19);

/**
 * One line per event, for terminals and logs; `step` events only when verbose. `paint` colours
 * the state word on a colour terminal (see progress.ts); the text is the same either way.
 */
export function renderEvent(e: EventRow, verbose = false, paint: (state: string, text: string) => string = (_, t) => t): string | null {
  if (e.state === 'step' && !verbose) return null;
  const who = e.instance ? `${e.instance} ` : '';
  const state = paint(e.state, e.state === 'failed' ? 'FAILED' : e.state);
  return `${clock(e.ts)}  ${e.stage.padEnd(8)} ${who}${state}${e.message ? `: ${e.message}` : ''}`;
}

export function renderTasks(tasks: TaskRow[]): string {
  if (tasks.length === 0) return 'No tasks.';
  return table([
    ['ID', 'STATE', 'TYPE', 'DEPLOYMENT', 'STARTED', 'DURATION', 'RESULT'],
    ...tasks.map((t) => [
      String(t.id),
      t.state,
      t.type,
      t.deployment ?? '-',
      t.startedAt.replace('T', ' ').slice(0, 19),
      t.endedAt ? formatDuration(Date.parse(t.endedAt) - Date.parse(t.startedAt)) : '-',
      t.error ? t.error.message.split('\n')[0]! : t.result ?? '',
    ]),
  ]);
}

export function renderTask(t: TaskRow, events: EventRow[], logInstances: string[]): string {
  const lines = [
    `Task ${t.id}: ${t.description}`,
    `  state:    ${t.state}`,
    `  started:  ${t.startedAt}`,
    `  ended:    ${t.endedAt ?? '-'}`,
  ];
  if (t.result) lines.push(`  result:   ${t.result}`);
  if (t.error) {
    lines.push(`  error:    ${t.error.message}`);
    lines.push(`  class:    ${t.error.class} (${t.error.code})${t.error.step ? `, step ${t.error.step}` : ''}`);
    if (t.error.logTail?.length) lines.push('  last output:', ...t.error.logTail.map((l) => `    ${l}`));
    if (t.error.hint) lines.push(`  hint:     ${t.error.hint}`);
  }
  lines.push('', 'Events:');
  for (const e of events) {
    const line = renderEvent(e, true);
    if (line) lines.push(`  ${line}`);
  }
  if (logInstances.length) lines.push('', `Per-VM logs: ${logInstances.join(', ')} (director task ${t.id} --vm INSTANCE)`);
  return lines.join('\n');
}

export function renderLogs(logs: LogRow[]): string {
  return logs.map((l) => `${l.ts} ${l.stream === 'director' ? '--' : l.stream === 'stderr' ? 'E ' : '  '} ${l.line}`).join('\n');
}

export function renderVms(vms: VmInfo[]): string {
  if (vms.length === 0) return 'No VMs.';
  return table([
    ['INSTANCE', 'STATE', 'AZ', 'CLOUD', 'IPS', 'VM CID', 'VERSION', 'DEPLOYMENT', 'ID'],
    ...vms.map((v) => [v.instance, v.state, v.az, v.cloud, v.ips.join(',') || '-', v.cid ?? '-', v.version ?? '-', v.deployment, v.id]),
  ]);
}
