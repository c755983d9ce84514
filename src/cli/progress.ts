/**
 * Live rendering of a task's events, for `deploy`, `delete-deployment` and `task N --follow`.
 *
 * Three forms of the same EventRow stream (STYLE.md: TTY, plain and --json render the same events):
 * - `--json`: one JSON line per event, unchanged.
 * - plain (stdout is not a terminal): one timestamped line per event, exactly `renderEvent`.
 * - terminal: the same lines scroll, and one status line stays at the bottom, redrawn in place
 *   (`\r` + clear line) after every event and once a second:
 *   `web: wave 2/5 · 7 in flight · 12/40 done · 0 failed · ETA 1m10s`.
 *   Every write that prints a line clears the status first and redraws it after, in one write,
 *   so the status text never ends up glued to an event line.
 *
 * Colour (failed red, finished green) only where `useColor` says so: never with NO_COLOR set,
 * forced with FORCE_COLOR (unless it is 0/false), otherwise only on a terminal.
 */
import type { EventRow } from '../tasks/tasks.js';
import { renderEvent } from './render.js';

/** Where the view writes: stdout, raw, plus what it needs to know about it. */
export interface Terminal {
  /** raw write, no newline added */
  write(s: string): void;
  /** stdout is a terminal */
  isTty: boolean;
  /** terminal width; 0 when unknown */
  columns(): number;
  env: Record<string, string | undefined>;
}

export function useColor(isTty: boolean, env: Record<string, string | undefined>): boolean {
  if (env.NO_COLOR) return false;
  const force = env.FORCE_COLOR;
  if (force !== undefined) return force !== '0' && force.toLowerCase() !== 'false';
  return isTty;
}

const ESC = '\x1b[';
export const CLEAR_LINE = `\r${ESC}2K`;
const sgr = (code: string) => (s: string) => `${ESC}${code}m${s}${ESC}0m`;
export const red = sgr('31');
export const green = sgr('32');
export const yellow = sgr('33');

export function paintState(state: string, text: string): string {
  if (state === 'failed') return red(text);
  if (state === 'finished') return green(text);
  if (state === 'cancelled' || state === 'skipped') return yellow(text);
  return text;
}

/** What the caller knows of the plan beyond the events (deploy has it; a follower does not). */
export interface ProgressPlan {
  /** instances the rollout touches (deletes included) */
  total: number;
  etaMs: number;
  groups: { name: string; canaries: number; waves: string[][] }[];
}

/** `1m10s`, `45s`, `2h05m`: short, for the status line. */
export function shortDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

/**
 * Counts derived from events only, so a second process following the task from the DB shows the
 * same status as the deploy that writes it. The plan, when given, adds wave totals.
 */
export class ProgressTracker {
  private total: number | null;
  private etaMs: number | null;
  private startMs: number | null = null;
  private phase = '';
  private readonly inFlight = new Set<string>();
  private readonly canaryGroups = new Set<string>();
  private done = 0;
  private failed = 0;
  private rollback: { total: number; done: number } | null = null;
  private cancelling = false;
  private halted = false;
  private seen = false;

  constructor(private readonly plan?: ProgressPlan) {
    this.total = plan ? plan.total : null;
    this.etaMs = plan ? plan.etaMs : null;
    for (const g of plan?.groups ?? []) if (g.canaries > 0) this.canaryGroups.add(g.name);
  }

  /** true once there is something worth a status line */
  get active(): boolean {
    return this.seen;
  }

  apply(e: EventRow): void {
    const at = Date.parse(e.ts);
    this.startMs ??= at;
    const data = e.data ?? {};
    const group = typeof data.group === 'string' ? data.group : e.instance?.split('/')[0] ?? '';
    if (e.instance === null) {
      switch (`${e.stage}:${e.state}`) {
        case 'plan:finished': {
          const summary = data.summary as Record<string, number> | undefined;
          if (summary && this.total === null) this.total = ['create', 'update', 'recreate', 'restart', 'delete'].reduce((n, k) => n + (summary[k] ?? 0), 0);
          if (typeof data.etaMs === 'number' && this.etaMs === null) this.etaMs = data.etaMs;
          this.startMs = at;
          this.phase = 'planned';
          this.seen = true;
          return;
        }
        case 'canaries:started':
          this.canaryGroups.add(group);
          this.phase = `${group}: canaries`;
          this.seen = true;
          return;
        case 'rollout:started':
          this.phase = `${group}: rolling`;
          this.seen = true;
          return;
        case 'delete:started':
        case 'cleanup:started':
          this.phase = e.stage === 'delete' ? 'deleting' : 'cleaning up';
          this.seen = true;
          return;
        case 'rollback:started':
          this.rollback = { total: Array.isArray(data.instances) ? data.instances.length : 0, done: 0 };
          this.phase = 'rolling back';
          return;
        case 'cancel:started':
          this.cancelling = true;
          return;
        case 'halt:failed':
          this.halted = true;
          return;
        default:
          return;
      }
    }
    if (e.stage === 'halt') {
      this.halted = true;
      return;
    }
    if (!['update', 'delete', 'rollback'].includes(e.stage)) return;
    const name = e.instance;
    if (e.state === 'started') {
      this.seen = true;
      this.inFlight.add(name);
      if (e.stage === 'update') {
        const wave = typeof data.wave === 'number' ? data.wave : null;
        if (data.canary === true) this.phase = `${group}: canaries`;
        else if (wave !== null) {
          const hasCanaries = this.canaryGroups.has(group);
          const n = hasCanaries ? wave : wave + 1;
          const planned = this.plan?.groups.find((g) => g.name === group);
          const of = planned ? planned.waves.length - (hasCanaries ? 1 : 0) : null;
          this.phase = `${group}: wave ${n}${of ? `/${of}` : ''}`;
        }
      } else if (e.stage === 'delete') this.phase = 'deleting';
      return;
    }
    if (e.state === 'finished' || e.state === 'failed' || e.state === 'skipped') {
      this.inFlight.delete(name);
      if (e.stage === 'rollback') {
        if (this.rollback) this.rollback.done++;
      } else if (e.state === 'finished') this.done++;
      else if (e.state === 'failed') this.failed++;
    }
  }

  /** The status line, plain text. */
  status(nowMs: number): string {
    const parts: string[] = [];
    let phase = this.phase || 'starting';
    if (this.halted && !this.rollback) phase += ' (halting)';
    if (this.cancelling) phase += ' (cancelling)';
    parts.push(phase);
    parts.push(`${this.inFlight.size} in flight`);
    parts.push(this.total !== null ? `${this.done}/${this.total} done` : `${this.done} done`);
    parts.push(`${this.failed} failed`);
    if (this.rollback) parts.push(`${this.rollback.done}/${this.rollback.total} rolled back`);
    const eta = this.eta(nowMs);
    if (eta !== null) parts.push(`ETA ${shortDuration(eta)}`);
    return parts.join(' · ');
  }

  /**
   * Remaining time. Before anything finished, the plan's estimate minus the time spent; after,
   * the observed pace: elapsed / finished × remaining (elapsed already reflects the window's
   * parallelism, so no max_in_flight arithmetic is needed). Worked example: 40 to do, 12 done
   * after 60 s → 5 s each → 28 left ≈ 2m20s.
   */
  eta(nowMs: number): number | null {
    if (this.startMs === null || this.halted || this.cancelling || this.rollback) return null;
    const elapsed = Math.max(0, nowMs - this.startMs);
    if (this.total !== null && this.done > 0) return (elapsed / this.done) * Math.max(0, this.total - this.done - this.failed);
    if (this.etaMs !== null) return Math.max(0, this.etaMs - elapsed);
    return null;
  }
}

export interface EventViewOptions {
  /** a whole line, newline added (the plain and --json path: io.out) */
  out: (line: string) => void;
  term: Terminal;
  json: boolean;
  /** print `step` events too */
  verbose: boolean;
  plan?: ProgressPlan;
  now?: () => number;
  /** redraw the status this often even without events, for the ETA (ms; 0 = never) */
  tickMs?: number;
}

/** The one sink every command that shows live events writes through. */
export class EventView {
  private readonly tracker: ProgressTracker;
  private readonly live: boolean;
  private readonly color: boolean;
  private shown = false;
  /** the status text on screen, to skip redraws that change nothing */
  private drawn = '';
  private timer: NodeJS.Timeout | null = null;
  private finished = false;

  constructor(private readonly o: EventViewOptions) {
    this.tracker = new ProgressTracker(o.plan);
    this.live = o.term.isTty && !o.json;
    this.color = !o.json && useColor(o.term.isTty, o.term.env);
  }

  /** Print an event (as JSON, a plain line, or a line above the status) and update the status. */
  event(e: EventRow): void {
    if (this.o.json) {
      this.o.out(JSON.stringify(e));
      return;
    }
    this.tracker.apply(e);
    const line = renderEvent(e, this.o.verbose, this.color ? paintState : undefined);
    if (!this.live) {
      if (line) this.o.out(line);
      return;
    }
    this.draw(line);
  }

  /** Update the status from an event without printing it (a follower showing logs instead). */
  track(e: EventRow): void {
    this.tracker.apply(e);
    if (this.live) this.draw(null);
  }

  /** Print any other line (a log line) the same way: above the status on a terminal. */
  line(text: string): void {
    if (!this.live) this.o.out(text);
    else this.draw(text);
  }

  /** Clear the status line, run `fn` (which may write to stderr), then redraw. */
  interject(fn: () => void): void {
    if (this.live && this.shown) {
      this.o.term.write(CLEAR_LINE);
      this.shown = false;
    }
    fn();
    if (this.live && !this.finished) this.draw(null);
  }

  /** Remove the status line and stop redrawing; later output starts on a clean line. */
  finish(): void {
    this.finished = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.live && this.shown) this.o.term.write(CLEAR_LINE);
    this.shown = false;
  }

  private now(): number {
    return (this.o.now ?? Date.now)();
  }

  private statusText(): string {
    const text = this.tracker.status(this.now());
    const width = this.o.term.columns();
    // One character short of the width: a line that fills it would wrap, and `\r` would then
    // only return to the start of the wrapped part.
    const fitted = width > 1 && text.length > width - 1 ? `${text.slice(0, Math.max(0, width - 2))}…` : text;
    if (!this.color || fitted !== text) return fitted;
    return fitted.replace(/ (\d+) failed/, (m, n: string) => (n === '0' ? m : ` ${red(`${n} failed`)}`));
  }

  /** One write: clear the status, print `line` (if any), draw the status again. */
  private draw(line: string | null): void {
    if (this.finished) {
      if (line !== null) this.o.term.write(`${line}\n`);
      return;
    }
    const status = this.tracker.active ? this.statusText() : null;
    if (line === null && this.shown && status === this.drawn) return;
    let s = this.shown ? CLEAR_LINE : '';
    if (line !== null) s += `${line}\n`;
    if (status !== null) {
      s += status;
      this.drawn = status;
      this.shown = true;
      this.startTimer();
    } else this.shown = false;
    if (s) this.o.term.write(s);
  }

  private startTimer(): void {
    const tick = this.o.tickMs ?? 1000;
    if (this.timer || tick <= 0) return;
    this.timer = setInterval(() => this.draw(null), tick);
    this.timer.unref();
  }
}
