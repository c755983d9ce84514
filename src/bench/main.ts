/**
 * `npm run bench [-- --json] [-- SCENARIO...]`: measures the rollout engine in one process and one
 * run, and prints ratios (wall time over the theoretical lower bound) rather than absolute
 * seconds, because these machines are noisy.
 *
 *   rollout-1000       1000 sim instances, canaries 5, max_in_flight 50, fixed per-instance time
 *   fail-and-rollback  the same fleet; health fails on one instance of the 3rd wave
 *   local-100          100 local-cloud VMs over real SSH, a release change, max_in_flight 20
 *   static-50          50 real OpenSSH hosts (static cloud), canary 1, max_in_flight 10
 *   static-300         300 real OpenSSH hosts, max_in_flight 50, no false failures (only when named: ~2 min)
 *
 * Lower bound of a rollout: T(canary wave) + ceil((N - canaries) / max_in_flight) × T.
 */
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openContext } from '../app/context.js';
import { deleteDeployment } from '../app/delete.js';
import { prepare } from '../app/deploy.js';
import { LocalCloudClient } from '../local-cloud/client.js';
import { SimCloud } from '../providers/sim/index.js';
import { benchManifest, print, round, run, timedRollout, type BenchManifest, type ScenarioResult } from './common.js';
import { staticScenarios } from './static.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');


/** Samples RSS while a scenario runs: the peak of this scenario, not of the whole process. */
async function measured<T>(fn: () => Promise<T>): Promise<{ value: T; wallMs: number; peakRssMb: number; cpuMs: number }> {
  let peak = process.memoryUsage().rss;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 25);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  try {
    const value = await fn();
    const wallMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    peak = Math.max(peak, process.memoryUsage().rss);
    return { value, wallMs, peakRssMb: Math.round(peak / 1048576), cpuMs: (cpu.user + cpu.system) / 1000 };
  } finally {
    clearInterval(timer);
  }
}

function workspace(name: string, cloudConfig: string) {
  const dir = mkdtempSync(join(tmpdir(), `director-bench-${name}-`));
  cpSync(join(ROOT, 'releases'), join(dir, 'releases'), { recursive: true });
  cpSync(join(ROOT, 'canaries'), join(dir, 'canaries'), { recursive: true });
  mkdirSync(join(dir, 'deployments'));
  writeFileSync(join(dir, 'deployments', 'cloud-config.yml'), cloudConfig);
  const manifest = join(dir, 'deployments', 'bench.yml');
  return { dir, home: join(dir, 'home'), manifest };
}

const manifest = (o: Omit<BenchManifest, 'name'>) => benchManifest({ name: 'bench', ...o });


const SIM_STEP_MS = 250;
const SIM_CLOUD = `azs:
- { name: z1, cloud: sim }
- { name: z2, cloud: sim }
- { name: z3, cloud: sim }
clouds:
- name: sim
  type: sim
  create_ms: 5
  delete_ms: 5
  stop_ms: ${SIM_STEP_MS}
  apply_ms: ${SIM_STEP_MS}
  start_ms: ${SIM_STEP_MS}
  healthy_after_ms: ${SIM_STEP_MS}
  persist: false
  rate_limit: 100000
  rate_limit_burst: 100000
vm_types:
- name: small
`;

async function simScenarios(selected: (name: string) => boolean): Promise<ScenarioResult[]> {
  const out: ScenarioResult[] = [];
  const N = 1000;
  const canaries = 5;
  const mif = 50;
  const ws = workspace('sim', SIM_CLOUD);
  const ctx = openContext(ws.home);
  try {
    // Setup, not measured: the fleet is created all at once.
    writeFileSync(ws.manifest, manifest({ instances: N, azs: ['z1', 'z2', 'z3'], greeting: 'A', canaries: 0, maxInFlight: N, watch: '0-5000' }));
    const setup = await run(ctx, ws.manifest);
    if (!setup.outcome.result?.ok) throw new Error(`setup of ${N} sim instances failed`);

    const T = 4 * SIM_STEP_MS; // stop + apply + start + healthy
    if (selected('rollout-1000')) {
      writeFileSync(ws.manifest, manifest({ instances: N, azs: ['z1', 'z2', 'z3'], greeting: 'B', canaries, maxInFlight: mif, watch: '0-5000' }));
      const m = await measured(() => run(ctx, ws.manifest));
      const r = m.value.outcome.result!;
      if (!r.ok || r.done.length !== N) throw new Error(`rollout-1000 did not update every instance (${r.done.length} done, ${r.failed.length} failed)`);
      const lowerBound = T + Math.ceil((N - canaries) / mif) * T;
      out.push({
        scenario: 'rollout-1000',
        instances: N,
        canaries,
        max_in_flight: mif,
        instance_ms: T,
        wall_ms: Math.round(m.wallMs),
        lower_bound_ms: lowerBound,
        ratio: round(m.wallMs / lowerBound),
        peak_rss_mb: m.peakRssMb,
        cpu_ms_per_instance: round(m.cpuMs / N),
      });
    }

    if (selected('fail-and-rollback')) {
      writeFileSync(ws.manifest, manifest({ instances: N, azs: ['z1', 'z2', 'z3'], greeting: 'C', canaries, maxInFlight: mif, watch: '0-2000' }));
      const plan = (await prepare(ctx, { manifestPath: ws.manifest })).plan;
      const target = plan.groups[0]!.waves[3]![0]!;
      const sim = SimCloud.for({ cloud: 'sim', home: ws.home });
      const before = sim.list({}).find((vm) => `${vm.tags.instance_group}/${vm.tags.index}` === target)!.current;
      sim.faults.healthFails = (instance, generation) => instance === target && generation !== before;
      let rollbackStart = 0;
      let rollbackEnd = 0;
      const m = await measured(() =>
        run(ctx, ws.manifest, (e) => {
          if (e.stage === 'rollback' && e.instance === null && e.state === 'started') rollbackStart = performance.now();
          if (e.stage === 'rollback' && e.instance === null && e.state === 'finished') rollbackEnd = performance.now();
        }),
      );
      sim.faults.healthFails = undefined;
      const r = m.value.outcome.result!;
      const touched = r.rolledBack.length + r.rollbackFailed.length + r.notRolledBack.length;
      // A rollback restarts the old generation: stop + start + healthy, no apply.
      const rollbackT = 3 * SIM_STEP_MS;
      const rollbackBound = Math.ceil(touched / mif) * rollbackT;
      const rollbackMs = rollbackEnd - rollbackStart;
      out.push({
        scenario: 'fail-and-rollback',
        instances: N,
        failed_instance: r.failed[0]?.instance ?? null,
        failed_step: r.failed[0]?.step ?? null,
        rolled_back: r.rolledBack.length,
        rollback_failed: r.rollbackFailed.length,
        untouched: N - touched,
        rollback_ms: Math.round(rollbackMs),
        rollback_lower_bound_ms: rollbackBound,
        ratio: round(rollbackMs / rollbackBound),
        wall_ms: Math.round(m.wallMs),
        peak_rss_mb: m.peakRssMb,
      });
    }
  } finally {
    ctx.close();
    rmSync(ws.dir, { recursive: true, force: true });
  }
  return out;
}

async function local100(): Promise<ScenarioResult> {
  const N = 100;
  const mif = 20;
  const ws = workspace('local', `azs:
- { name: z1, cloud: local }
- { name: z2, cloud: local }
clouds:
- { name: local, type: local }
vm_types:
- name: small
`);
  const ctx = openContext(ws.home);
  try {
    writeFileSync(ws.manifest, manifest({ instances: N, azs: ['z1', 'z2'], greeting: 'A', canaries: 0, maxInFlight: 50, watch: '0-30000' }));
    const setup = await run(ctx, ws.manifest);
    if (!setup.outcome.result?.ok) throw new Error(`setup of ${N} local VMs failed: ${JSON.stringify(setup.outcome.result?.failed[0])}`);

    writeFileSync(ws.manifest, manifest({ instances: N, azs: ['z1', 'z2'], greeting: 'B', canaries: 1, maxInFlight: mif, watch: '0-30000' }));
    const m = await measured(() => timedRollout(ctx, ws.manifest, N, mif, 'local-100'));
    const t = m.value;
    return {
      scenario: 'local-100',
      instances: N,
      max_in_flight: mif,
      canary_ms: t.canaryMs,
      instance_median_ms: t.medianMs,
      wall_ms: Math.round(t.wallMs),
      lower_bound_ms: t.lowerBoundMs,
      ratio: t.ratio,
      unloaded_lower_bound_ms: t.canaryMs * (1 + Math.ceil((N - 1) / mif)),
      peak_rss_mb: m.peakRssMb,
      cpu_ms_per_instance: round(m.cpuMs / N),
    };
  } finally {
    await deleteDeployment(ctx, 'bench').catch(() => undefined);
    ctx.close();
    await (await LocalCloudClient.connectIfRunning(ws.home))?.stop();
    rmSync(ws.dir, { recursive: true, force: true });
  }
}


async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const json = args.includes('--json');
  const names = args.filter((a) => !a.startsWith('--'));
  const known = ['rollout-1000', 'fail-and-rollback', 'local-100', 'static-50', 'static-300'];
  const unknown = names.filter((n) => !known.includes(n));
  if (unknown.length) {
    process.stderr.write(`unknown scenario ${unknown.join(', ')}; scenarios: ${known.join(', ')}\n`);
    process.exit(1);
  }
  const byDefault = (n: string) => n !== 'static-300';
  const selected = (n: string) => (names.length === 0 ? byDefault(n) : names.includes(n));
  if (selected('rollout-1000') || selected('fail-and-rollback')) for (const r of await simScenarios(selected)) print(r, json);
  if (selected('local-100')) print(await local100(), json);
  if (selected('static-50') || selected('static-300')) await staticScenarios(selected, json);
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
