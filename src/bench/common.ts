/** What every benchmark scenario shares: running a deploy, timing a rollout against its bound, printing. */
import type { DirectorContext } from '../app/context.js';
import { deploy, prepare } from '../app/deploy.js';
import type { EventRow } from '../tasks/tasks.js';

export interface ScenarioResult {
  scenario: string;
  [key: string]: unknown;
}

export interface BenchManifest {
  name: string;
  instances: number;
  azs: string[];
  greeting: string;
  canaries: number;
  maxInFlight: number;
  /** canary and update watch time, "min-max" ms */
  watch: string;
}

/** The hello release on one `web` group; scenarios change the greeting to roll a new version. */
export function benchManifest(o: BenchManifest): string {
  return `name: ${o.name}
releases:
- name: hello
  path: ../releases/hello
update:
  canaries: ${o.canaries}
  max_in_flight: ${o.maxInFlight}
  canary_watch_time: ${o.watch}
  update_watch_time: ${o.watch}
instance_groups:
- name: web
  instances: ${o.instances}
  azs: [${o.azs.join(', ')}]
  vm_type: small
  jobs:
  - name: web
    release: hello
    properties:
      greeting: ${o.greeting}
  health: [http-health]
`;
}

export const round = (x: number) => Math.round(x * 1000) / 1000;

export async function run(ctx: DirectorContext, file: string, onEvent?: (e: EventRow) => void) {
  const prepared = await prepare(ctx, { manifestPath: file });
  const outcome = await deploy(ctx, prepared, { onEvent });
  return { prepared, outcome };
}

/**
 * Deploys `file` (a change rolled with canary 1) and compares its wall time with the lower bound
 * built from per-instance times measured in the same run: the canary's, then the median of the
 * others (which ran under the window's own load) for each later wave.
 */
export async function timedRollout(ctx: DirectorContext, file: string, instances: number, maxInFlight: number, name: string) {
  const durations = new Map<string, number>();
  const t0 = performance.now();
  const { outcome } = await run(ctx, file, (e) => {
    if (e.stage === 'update' && e.state === 'finished' && e.instance) durations.set(e.instance, Number(e.data?.durationMs));
  });
  const wallMs = performance.now() - t0;
  const r = outcome.result!;
  if (!r.ok) throw new Error(`${name} failed: ${JSON.stringify(r.failed[0])}`);
  const canary = outcome.plan.groups[0]!.waves[0]![0]!;
  const canaryMs = durations.get(canary)!;
  const others = [...durations.entries()].filter(([k]) => k !== canary).map(([, v]) => v).sort((a, b) => a - b);
  const medianMs = others[Math.floor(others.length / 2)]!;
  const lowerBoundMs = canaryMs + Math.ceil((instances - 1) / maxInFlight) * medianMs;
  return { outcome, wallMs, canaryMs, medianMs, lowerBoundMs, ratio: round(wallMs / lowerBoundMs) };
}

export function print(r: ScenarioResult, json: boolean): void {
  if (json) {
    process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  const fields = Object.entries(r).filter(([k]) => k !== 'scenario').map(([k, v]) => `${k}=${v}`).join(' ');
  process.stdout.write(`${r.scenario}: ${fields}\n`);
}
