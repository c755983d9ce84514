/**
 * Benchmarks of the `static` provider against real OpenSSH daemons: every "machine" is its own
 * /usr/sbin/sshd on its own loopback address (127.253.x.y:2222, OpenSSH defaults otherwise,
 * MaxStartups 10:30:100 included), all logging in as the current user, each with its own base_dir.
 *
 *   static-50    50 hosts, canary 1, max_in_flight 10, a release change: wall time, the lower
 *                bound from the per-instance time measured in the same run, their ratio (≤ 1.3)
 *   static-300   300 hosts, max_in_flight 50, first deploy then a release change: failures
 *
 * The sshd fleet launcher is exported for the tests (test/helpers/sshd-fleet.ts).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pLimit from 'p-limit';
import { openContext, type DirectorContext } from '../app/context.js';
import { deleteDeployment } from '../app/delete.js';
import { benchManifest, print, round, run, timedRollout, type BenchManifest, type ScenarioResult } from './common.js';

const execFileP = promisify(execFile);
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SSHD_PATH = '/usr/sbin/sshd';

// ---------------------------------------------------------------------------------------------
// A fleet of real sshd "machines"

export interface FleetHost {
  index: number;
  address: string;
  port: number;
  /** this host's own directory: sshd config, host key, log */
  dir: string;
  /** where the director should install on this host (absolute, under dir) */
  baseDir: string;
  hostKeyPath: string;
  /** `SHA256:…` of the current host key */
  fingerprint: string;
  /** pid of the listening sshd */
  pid(): number | undefined;
  /** what sshd wrote to stderr (-e) since it (re)started */
  log(): string;
  stop(): Promise<void>;
  /** stops and starts sshd again on the same address and port, with a fresh host key if asked */
  restart(opts?: { newHostKey?: boolean }): Promise<void>;
}

export interface FleetOptions {
  count: number;
  /** the first two octets of the fleet's own /16, e.g. `127.251` */
  prefix: string;
  /** same port on every address (default 2222) */
  port?: number;
  authorizedKeys: string[];
  /** parent directory of every host's directory */
  root: string;
  /** more sshd_config lines for every host */
  extraConfig?: string[];
  /** sshds started at once (default 16) */
  concurrency?: number;
}

/** Why real-sshd scenarios cannot run here, or undefined when they can. */
export function sshdUnavailableReason(): string | undefined {
  if (!existsSync(SSHD_PATH)) return `${SSHD_PATH} not found (install openssh-server)`;
  if (!existsSync('/usr/bin/ssh-keygen')) return '/usr/bin/ssh-keygen not found (install openssh-client)';
  return undefined;
}

export function fleetAddress(prefix: string, i: number): string {
  return `${prefix}.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`;
}

async function newHostKey(path: string): Promise<string> {
  rmSync(path, { force: true });
  rmSync(`${path}.pub`, { force: true });
  await execFileP('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'fleet-host', '-f', path]);
  const { stdout } = await execFileP('ssh-keygen', ['-lf', `${path}.pub`]);
  return stdout.split(' ')[1]!;
}

function waitExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    child.once('exit', () => res());
    child.kill('SIGTERM');
  });
}

/** One sshd; `address:port` is fixed for its life, so restarts come back where the director expects. */
export async function startFleetHost(o: { index: number; address: string; port: number; dir: string; authorizedKeysFile: string; extraConfig?: string[] }): Promise<FleetHost> {
  mkdirSync(o.dir, { recursive: true });
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const hostKeyPath = join(o.dir, 'ssh_host_ed25519_key');
  const config = join(o.dir, 'sshd_config');
  let fingerprint = await newHostKey(hostKeyPath);
  writeFileSync(
    config,
    [
      `ListenAddress ${o.address}:${o.port}`,
      `HostKey ${hostKeyPath}`,
      `AuthorizedKeysFile ${o.authorizedKeysFile}`,
      `PidFile ${join(o.dir, 'sshd.pid')}`,
      'StrictModes no',
      'UsePAM no',
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      // These hosts log in as this machine's root, whose ~/.bashrc runs `pyenv init` (~100 ms of
      // CPU per command, and python3 through pyenv's shims). bash sources ~/.bashrc for SSH
      // commands only at shell level 1; SHLVL=1 in the session makes it level 2, so commands
      // cost what they would on a real host. (See /work/shared/TESTING.md, "Quirks".)
      'SetEnv SHLVL=1',
      ...(o.extraConfig ?? []),
      '',
    ].join('\n'),
  );
  let child: ChildProcess | undefined;
  let log = '';
  const launch = async () => {
    for (let attempt = 0; attempt < 20; attempt++) {
      const c = spawn(SSHD_PATH, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
      log = '';
      c.stderr!.setEncoding('utf8');
      c.stderr!.on('data', (d: string) => {
        // bounded: a long benchmark must not grow the test process without limit
        log = (log + d).slice(-256 * 1024);
      });
      const up = await new Promise<boolean>((res) => {
        const deadline = setTimeout(() => res(false), 10_000);
        const check = () => {
          if (log.includes(`Server listening on ${o.address} port ${o.port}`)) {
            clearTimeout(deadline);
            c.off('exit', onExit);
            res(true);
          }
        };
        const onExit = () => {
          clearTimeout(deadline);
          res(false);
        };
        c.stderr!.on('data', check);
        c.once('exit', onExit);
      });
      if (up) {
        child = c;
        return;
      }
      await waitExit(c);
      // the previous listener's socket may linger a moment after a restart
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`sshd on ${o.address}:${o.port} did not start:\n${log}`);
  };
  await launch();
  const host: FleetHost = {
    index: o.index,
    address: o.address,
    port: o.port,
    dir: o.dir,
    baseDir: join(o.dir, 'director'),
    hostKeyPath,
    get fingerprint() {
      return fingerprint;
    },
    pid: () => child?.pid,
    log: () => log,
    async stop() {
      if (child) await waitExit(child);
    },
    async restart(opts = {}) {
      if (child) await waitExit(child);
      if (opts.newHostKey) fingerprint = await newHostKey(hostKeyPath);
      await launch();
    },
  };
  return host;
}

export async function startSshdFleet(o: FleetOptions): Promise<FleetHost[]> {
  const port = o.port ?? 2222;
  mkdirSync(o.root, { recursive: true });
  const authorizedKeysFile = join(o.root, 'authorized_keys');
  writeFileSync(authorizedKeysFile, o.authorizedKeys.map((k) => `${k.trim()}\n`).join(''), { mode: 0o600 });
  const limit = pLimit(o.concurrency ?? 16);
  const started: FleetHost[] = [];
  try {
    await Promise.all(
      Array.from({ length: o.count }, (_, i) =>
        limit(async () => {
          const h = await startFleetHost({ index: i, address: fleetAddress(o.prefix, i), port, dir: join(o.root, `host-${i}`), authorizedKeysFile, extraConfig: o.extraConfig });
          started.push(h);
        }),
      ),
    );
  } catch (e) {
    await stopFleet(started);
    throw e;
  }
  return started.sort((a, b) => a.index - b.index);
}

/** Stops every job the director left on the hosts (their ctl), then every sshd. */
export async function stopFleet(hosts: FleetHost[]): Promise<void> {
  const limit = pLimit(16);
  await Promise.all(
    hosts.map((h) =>
      limit(async () => {
        const ctl = join(h.baseDir, 'bin', 'ctl');
        if (existsSync(ctl)) await execFileP('sh', [ctl, 'stop'], { timeout: 30_000 }).catch(() => undefined);
        await h.stop();
      }),
    ),
  );
}

/** The `hosts:` list of a static cloud for these hosts (every one pinned unless pin is false). */
export function staticHostsYaml(hosts: FleetHost[], opts: { pin?: boolean; indent?: string } = {}): string {
  const ind = opts.indent ?? '  ';
  return hosts
    .map((h) => `${ind}- { address: ${h.address}, port: ${h.port}, base_dir: ${h.baseDir}${opts.pin === false ? '' : `, host_key: "${h.fingerprint}"`} }\n`)
    .join('');
}

// ---------------------------------------------------------------------------------------------
// Scenarios


const manifest = (o: Pick<BenchManifest, 'instances' | 'greeting' | 'canaries' | 'maxInFlight'>) =>
  benchManifest({ name: 'bench-static', azs: ['z1', 'z2'], watch: '0-30000', ...o });

async function withFleet<T>(name: string, n: number, prefix: string, fn: (ws: { dir: string; manifest: string; ctx: DirectorContext }) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), `director-bench-${name}-`));
  cpSync(join(ROOT, 'releases'), join(dir, 'releases'), { recursive: true });
  cpSync(join(ROOT, 'canaries'), join(dir, 'canaries'), { recursive: true });
  mkdirSync(join(dir, 'deployments'));
  const ctx = openContext(join(dir, 'home'));
  let hosts: FleetHost[] = [];
  try {
    hosts = await startSshdFleet({ count: n, prefix, authorizedKeys: [ctx.keys.publicKey], root: join(dir, 'hosts'), concurrency: 24 });
    writeFileSync(
      join(dir, 'deployments', 'cloud-config.yml'),
      `azs:\n- { name: z1, cloud: dc1 }\n- { name: z2, cloud: dc1 }\nclouds:\n- name: dc1\n  type: static\n  hosts:\n${staticHostsYaml(hosts, { indent: '  ' })}vm_types:\n- name: small\n`,
    );
    return await fn({ dir, manifest: join(dir, 'deployments', 'bench.yml'), ctx });
  } finally {
    await deleteDeployment(ctx, 'bench-static').catch(() => undefined);
    ctx.close();
    await stopFleet(hosts);
    rmSync(dir, { recursive: true, force: true });
  }
}


async function static50(): Promise<ScenarioResult> {
  const N = 50;
  const mif = 10;
  return withFleet('static50', N, '127.253', async ({ manifest: file, ctx }) => {
    writeFileSync(file, manifest({ instances: N, greeting: 'A', canaries: 0, maxInFlight: 50 }));
    const setup = await run(ctx, file);
    if (!setup.outcome.result?.ok) throw new Error(`setup of ${N} static hosts failed: ${JSON.stringify(setup.outcome.result?.failed[0])}`);

    writeFileSync(file, manifest({ instances: N, greeting: 'B', canaries: 1, maxInFlight: mif }));
    const t = await timedRollout(ctx, file, N, mif, 'static-50');
    return {
      scenario: 'static-50',
      instances: N,
      max_in_flight: mif,
      canary_ms: t.canaryMs,
      instance_median_ms: t.medianMs,
      wall_ms: Math.round(t.wallMs),
      lower_bound_ms: t.lowerBoundMs,
      ratio: t.ratio,
      failures: t.outcome.result!.failed.length,
    };
  });
}

async function static300(): Promise<ScenarioResult> {
  const N = 300;
  const mif = 50;
  return withFleet('static300', N, '127.254', async ({ manifest: file, ctx }) => {
    writeFileSync(file, manifest({ instances: N, greeting: 'A', canaries: 1, maxInFlight: mif }));
    const t0 = performance.now();
    const first = await run(ctx, file);
    const createMs = performance.now() - t0;
    writeFileSync(file, manifest({ instances: N, greeting: 'B', canaries: 1, maxInFlight: mif }));
    const durations = new Map<string, number>();
    const t1 = performance.now();
    const second = await run(ctx, file, (e) => {
      if (e.stage === 'update' && e.state === 'finished' && e.instance) durations.set(e.instance, Number(e.data?.durationMs));
    });
    const updateMs = performance.now() - t1;
    // the same lower bound as static-50, from the per-instance times of this update
    const canary = second.outcome.plan.groups[0]?.waves[0]?.[0];
    const tCanary = canary ? (durations.get(canary) ?? 0) : 0;
    const others = [...durations.entries()].filter(([k]) => k !== canary).map(([, v]) => v).sort((a, b) => a - b);
    const tMedian = others[Math.floor(others.length / 2)] ?? 0;
    const lowerBound = tCanary + Math.ceil((N - 1) / mif) * tMedian;
    const f1 = first.outcome.result?.failed ?? [];
    const f2 = second.outcome.result?.failed ?? [];
    return {
      scenario: 'static-300',
      instances: N,
      max_in_flight: mif,
      create_wall_ms: Math.round(createMs),
      update_wall_ms: Math.round(updateMs),
      update_instance_median_ms: tMedian,
      update_lower_bound_ms: lowerBound,
      update_ratio: lowerBound > 0 ? round(updateMs / lowerBound) : null,
      failures: f1.length + f2.length,
      ...(f1.length + f2.length > 0 ? { first_failure: `${(f1[0] ?? f2[0])!.instance} ${(f1[0] ?? f2[0])!.code}: ${(f1[0] ?? f2[0])!.message}` } : {}),
      ok: Boolean(first.outcome.result?.ok && second.outcome.result?.ok),
    };
  });
}


/** Runs the selected static scenarios (static-50, static-300) and prints one line (or JSON) each. */
export async function staticScenarios(selected: (name: string) => boolean, json: boolean): Promise<void> {
  const want = ['static-50', 'static-300'].filter(selected);
  if (want.length === 0) return;
  const reason = sshdUnavailableReason();
  if (reason) {
    for (const s of want) print({ scenario: s, skipped: reason }, json);
    return;
  }
  if (selected('static-50')) print(await static50(), json);
  if (selected('static-300')) print(await static300(), json);
}
