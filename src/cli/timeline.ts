/**
 * `director task N --timeline`: when each instance started, reached each step, and finished or
 * failed, relative to the task's start. Built from the task's events only (a pure function), then
 * rendered as text, JSON, or a self-contained HTML page with an SVG Gantt chart (`--out`).
 */
import type { EventRow, TaskRow } from '../tasks/tasks.js';

export interface TimelineStep {
  name: string;
  /** ms since the task started */
  atMs: number;
}

export interface TimelineBar {
  /** `web/0`, or `web/0 rollback` / `web/0 delete` for those stages */
  label: string;
  instance: string;
  stage: string;
  startMs: number;
  endMs: number | null;
  outcome: 'finished' | 'failed' | 'skipped' | 'running';
  steps: TimelineStep[];
  /** why it failed or was skipped */
  message: string | null;
}

export interface Timeline {
  taskId: number;
  description: string;
  state: string;
  startedAt: string;
  /** to the task's end, or to its last event while it runs */
  durationMs: number;
  bars: TimelineBar[];
  /** task-level moments: canaries, rollout, halt, rollback, the end */
  marks: { label: string; atMs: number }[];
}

const INSTANCE_STAGES = new Set(['update', 'delete', 'rollback']);

export function buildTimeline(task: TaskRow, events: EventRow[]): Timeline {
  const t0 = Date.parse(task.startedAt);
  const rel = (ts: string) => Date.parse(ts) - t0;
  const bars: TimelineBar[] = [];
  const open = new Map<string, TimelineBar>();
  const marks: Timeline['marks'] = [];
  let last = 0;
  for (const e of events) {
    const at = rel(e.ts);
    last = Math.max(last, at);
    if (e.instance === null || !INSTANCE_STAGES.has(e.stage)) {
      if (e.state !== 'step') marks.push({ label: `${e.stage} ${e.state}`, atMs: at });
      continue;
    }
    const key = `${e.stage}\0${e.instance}`;
    let bar = open.get(key);
    if (e.state === 'started' || !bar) {
      bar = { label: e.stage === 'update' ? e.instance : `${e.instance} ${e.stage}`, instance: e.instance, stage: e.stage, startMs: at, endMs: null, outcome: 'running', steps: [], message: null };
      bars.push(bar);
      open.set(key, bar);
      if (e.state === 'started') continue;
    }
    if (e.state === 'step') bar.steps.push({ name: e.message ?? '?', atMs: at });
    else if (e.state === 'finished' || e.state === 'failed' || e.state === 'skipped') {
      bar.endMs = at;
      bar.outcome = e.state;
      if (e.state !== 'finished') bar.message = e.message;
      open.delete(key);
    }
  }
  const durationMs = task.endedAt ? Date.parse(task.endedAt) - t0 : last;
  bars.sort((a, b) => a.startMs - b.startMs || a.label.localeCompare(b.label, 'en', { numeric: true }));
  return { taskId: task.id, description: task.description, state: task.state, startedAt: task.startedAt, durationMs, bars, marks };
}

const secs = (ms: number) => `+${(ms / 1000).toFixed(2)}s`;

/** A bar of `width` characters: where the instance's work falls within the task. */
function asciiBar(bar: TimelineBar, total: number, width: number): string {
  const scale = (ms: number) => Math.min(width - 1, Math.max(0, Math.round((ms / Math.max(total, 1)) * (width - 1))));
  const from = scale(bar.startMs);
  const to = scale(bar.endMs ?? total);
  const cells: string[] = Array.from({ length: width }, (_, i) => (i >= from && i <= to ? '=' : ' '));
  if (bar.outcome === 'failed') cells[to] = 'x';
  if (bar.outcome === 'running') cells[to] = '>';
  return `|${cells.join('')}|`;
}

export function renderTimeline(tl: Timeline): string {
  const lines = [`Task ${tl.taskId}: ${tl.description} (${tl.state}, ${(tl.durationMs / 1000).toFixed(2)} s; times from the task start ${tl.startedAt})`];
  if (tl.bars.length === 0) {
    lines.push('', 'No instance was touched by this task.');
    return lines.join('\n');
  }
  const width = Math.max(...tl.bars.map((b) => b.label.length));
  lines.push('');
  for (const b of tl.bars) {
    const parts = [`started ${secs(b.startMs)}`, ...b.steps.map((s) => `${s.name} ${secs(s.atMs)}`)];
    if (b.endMs !== null) parts.push(`${b.outcome === 'failed' ? 'FAILED' : b.outcome} ${secs(b.endMs)} (${((b.endMs - b.startMs) / 1000).toFixed(2)} s)`);
    else parts.push('still running');
    lines.push(`  ${b.label.padEnd(width)}  ${asciiBar(b, tl.durationMs, 24)}  ${parts.join(' · ')}${b.message ? `: ${b.message.split('\n')[0]}` : ''}`);
  }
  if (tl.marks.length) lines.push('', `  task: ${tl.marks.map((m) => `${m.label} ${secs(m.atMs)}`).join(' · ')}`);
  return lines.join('\n');
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

const STEP_COLORS: Record<string, string> = {
  create_vm: '#8e7cc3',
  connect: '#b4a7d6',
  install: '#9fc5e8',
  drain: '#f6b26b',
  stop: '#e69138',
  delete_vm: '#cc4125',
  apply: '#6fa8dc',
  start: '#93c47d',
  health: '#38761d',
};
const stepColor = (name: string) => STEP_COLORS[name] ?? '#999999';

/** A self-contained page: inline CSS and SVG, no scripts, no external files. */
export function renderTimelineHtml(tl: Timeline): string {
  const labelW = 170;
  const chartW = 900;
  const rowH = 24;
  const top = 34;
  const total = Math.max(tl.durationMs, 1);
  const x = (ms: number) => labelW + (Math.max(0, ms) / total) * chartW;
  const height = top + tl.bars.length * rowH + 30;
  const parts: string[] = [];
  // Time axis: about 8 ticks at a round step.
  const rough = total / 8;
  const mag = 10 ** Math.floor(Math.log10(Math.max(rough, 1)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= rough) ?? rough;
  for (let ms = 0; ms <= total + 1; ms += step) {
    parts.push(`<line x1="${x(ms).toFixed(1)}" y1="${top - 6}" x2="${x(ms).toFixed(1)}" y2="${height - 24}" class="grid"/>`);
    parts.push(`<text x="${x(ms).toFixed(1)}" y="${top - 12}" class="tick">${esc(secs(ms))}</text>`);
  }
  for (const m of tl.marks) {
    parts.push(`<line x1="${x(m.atMs).toFixed(1)}" y1="${top - 4}" x2="${x(m.atMs).toFixed(1)}" y2="${height - 24}" class="mark"><title>${esc(`${m.label} ${secs(m.atMs)}`)}</title></line>`);
  }
  tl.bars.forEach((b, i) => {
    const y = top + i * rowH;
    const end = b.endMs ?? tl.durationMs;
    parts.push(`<text x="${labelW - 8}" y="${y + rowH / 2 + 4}" class="label">${esc(b.label)}</text>`);
    // One segment per step, from the step to the next one (the first, from the start to its first step).
    const points = [{ name: b.stage === 'update' ? 'started' : b.stage, atMs: b.startMs }, ...b.steps];
    points.forEach((p, j) => {
      const until = j + 1 < points.length ? points[j + 1]!.atMs : end;
      const x1 = x(p.atMs);
      const w = Math.max(1, x(until) - x1);
      const tip = `${b.label} ${p.name} ${secs(p.atMs)} → ${secs(until)} (${((until - p.atMs) / 1000).toFixed(2)} s)`;
      parts.push(`<rect x="${x1.toFixed(1)}" y="${y + 4}" width="${w.toFixed(1)}" height="${rowH - 8}" fill="${stepColor(p.name)}"><title>${esc(tip)}</title></rect>`);
    });
    const cls = b.outcome === 'failed' ? 'failed' : b.outcome === 'running' ? 'running' : 'ok';
    const tip = `${b.label}: ${b.outcome}${b.endMs !== null ? ` at ${secs(b.endMs)}` : ''}${b.message ? ` — ${b.message}` : ''}`;
    parts.push(`<rect x="${x(b.startMs).toFixed(1)}" y="${y + 4}" width="${Math.max(1, x(end) - x(b.startMs)).toFixed(1)}" height="${rowH - 8}" class="outline ${cls}"><title>${esc(tip)}</title></rect>`);
    if (b.outcome === 'failed') parts.push(`<text x="${(x(end) + 4).toFixed(1)}" y="${y + rowH / 2 + 4}" class="fail">✗ ${esc((b.message ?? 'failed').split('\n')[0]!.slice(0, 80))}</text>`);
  });
  const used = [...new Set(tl.bars.flatMap((b) => b.steps.map((s) => s.name)))];
  const legend = used.map((n) => `<span><i style="background:${stepColor(n)}"></i>${esc(n)}</span>`).join(' ');
  const rows = tl.bars
    .map((b) => `<tr><td>${esc(b.label)}</td><td>${secs(b.startMs)}</td>${b.steps.map((s) => `<td>${esc(s.name)} ${secs(s.atMs)}</td>`).join('')}<td class="${b.outcome}">${b.outcome}${b.endMs !== null ? ` ${secs(b.endMs)}` : ''}</td></tr>`)
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>director task ${tl.taskId} timeline</title>
<style>
body { font: 13px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 16px; }
svg text { font: 11px ui-monospace, monospace; }
.label { text-anchor: end; } .tick { text-anchor: middle; fill: #666; }
.grid { stroke: #eee; } .mark { stroke: #bbb; stroke-dasharray: 3 3; }
.outline { fill: none; stroke: #555; } .outline.failed { stroke: #c00; stroke-width: 2; } .outline.running { stroke-dasharray: 4 2; }
.fail { fill: #c00; }
.legend span { margin-right: 1em; } .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
table { border-collapse: collapse; margin-top: 1em; } td { padding: 2px 8px; border-bottom: 1px solid #eee; font-family: ui-monospace, monospace; }
td.failed { color: #c00; } td.finished { color: #080; }
</style></head>
<body>
<h1>Task ${tl.taskId}: ${esc(tl.description)} — ${esc(tl.state)}, ${(tl.durationMs / 1000).toFixed(2)} s</h1>
<p>Times are relative to the task's start, ${esc(tl.startedAt)}. Hover a bar for details.</p>
<p class="legend">${legend}</p>
<svg xmlns="http://www.w3.org/2000/svg" width="${labelW + chartW + 260}" height="${height}" viewBox="0 0 ${labelW + chartW + 260} ${height}">
${parts.join('\n')}
</svg>
<table>
${rows}
</table>
</body></html>
`;
}
