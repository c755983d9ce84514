/**
 * Health checks run from the director to each instance: http and tcp against the instance's
 * address, command over the instance's SSH connection. A watch polls them from the window's
 * minimum until its maximum: healthy at or after the minimum passes, still unhealthy at the
 * maximum fails; a job process that died fails at once instead of waiting out the window.
 */
import { connect } from 'node:net';
import type { CheckResult } from '../instance/driver.js';
import type { HealthCheckDef, WatchTime } from '../manifest/types.js';
import type { Clock } from '../util/clock.js';

export interface CheckTarget {
  address: string;
  /** the effective properties of the group's jobs, for `port: {property: port}` */
  properties: Record<string, unknown>;
  /** runs a command on the instance (command checks) */
  exec(command: string, timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }>;
}

export type { CheckResult };

function portOf(def: { port: number | { property: string } }, target: CheckTarget): number {
  if (typeof def.port === 'number') return def.port;
  const v = target.properties[def.port.property];
  const n = typeof v === 'number' ? v : Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`health check '${(def as { name?: string }).name}' reads port from property '${def.port.property}', which is ${v === undefined ? 'not set' : 'not a port'}`);
  return n;
}

export async function runCheck(def: HealthCheckDef, target: CheckTarget): Promise<CheckResult> {
  try {
    if (def.type === 'http') {
      const url = `http://${target.address}:${portOf(def, target)}${def.path}`;
      const res = await fetch(url, { signal: AbortSignal.timeout(def.timeoutMs) });
      await res.arrayBuffer();
      return res.status === def.expectStatus
        ? { ok: true, detail: `${def.name}: GET ${url} → ${res.status}` }
        : { ok: false, detail: `${def.name}: GET ${url} → ${res.status}, expected ${def.expectStatus}` };
    }
    if (def.type === 'tcp') {
      const port = portOf(def, target);
      await new Promise<void>((resolve, reject) => {
        const sock = connect({ host: target.address, port, timeout: def.timeoutMs });
        sock.once('connect', () => { sock.destroy(); resolve(); });
        sock.once('timeout', () => { sock.destroy(); reject(new Error('timed out')); });
        sock.once('error', reject);
      });
      return { ok: true, detail: `${def.name}: tcp ${target.address}:${port} open` };
    }
    const r = await target.exec(def.command, def.timeoutMs);
    return r.code === 0 ? { ok: true, detail: `${def.name}: command exit 0` } : { ok: false, detail: `${def.name}: command exit ${r.code}: ${(r.stderr || r.stdout).trim().split('\n').pop() ?? ''}` };
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code;
    return { ok: false, detail: `${def.name}: ${cause ?? (err instanceof Error ? err.message : String(err))}` };
  }
}

export interface WatchOutcome {
  healthy: boolean;
  elapsedMs: number;
  detail: string;
  /** set when the job's process died during the watch */
  crashed?: string;
}

/**
 * Polls `probe` from the start of the window: healthy at or after `minMs` passes, still
 * unhealthy at `maxMs` fails. The pause between polls grows with the time already waited (5% of
 * it, at least `pollMs`, at most 1 s), so a job is seen healthy at most ~5% after it became so:
 * a fixed or doubling interval would add its own quantum to every instance of every wave. A 30 s
 * watch still costs only ~100 probes.
 */
export async function watchHealth(
  probe: () => Promise<CheckResult[]>,
  window: WatchTime,
  clock: Clock,
  opts: { pollMs?: number; processAlive?: () => Promise<string | null> } = {},
): Promise<WatchOutcome> {
  const minInterval = opts.pollMs ?? 50;
  const start = clock.now();
  let lastProcessCheck = -Infinity;
  for (;;) {
    const elapsed = clock.now() - start;
    if (opts.processAlive && elapsed - lastProcessCheck >= 1000) {
      lastProcessCheck = elapsed;
      const dead = await opts.processAlive();
      if (dead) return { healthy: false, elapsedMs: clock.now() - start, detail: dead, crashed: dead };
    }
    const results = await probe();
    const failing = results.filter((r) => !r.ok);
    const detail = failing.length ? failing.map((r) => r.detail).join('; ') : results.map((r) => r.detail).join('; ') || 'process running';
    const now = clock.now() - start;
    if (failing.length === 0 && now >= window.minMs) return { healthy: true, elapsedMs: now, detail };
    if (now >= window.maxMs) return { healthy: false, elapsedMs: now, detail };
    const interval = Math.min(1000, Math.max(minInterval, now * 0.05));
    const wait = failing.length === 0 ? window.minMs - now : interval;
    await clock.sleep(Math.max(1, Math.min(wait, window.maxMs - now)));
  }
}
