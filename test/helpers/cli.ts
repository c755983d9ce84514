/** Runs the real CLI (bin/director.js over dist/) as a user would, in its own process. */
import { spawn } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], opts: { home: string; cwd?: string; timeoutMs?: number; env?: Record<string, string> }): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'bin', 'director.js'), ...args], {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, DIRECTOR_HOME: opts.home, NO_COLOR: '1', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`director ${args.join(' ')} timed out\nstdout:\n${stdout}\nstderr:\n${stderr}`));
    }, opts.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** A scratch workspace: a DIRECTOR_HOME plus a copy of the sample release, manifests and canaries. */
export function workspace(prefix: string) {
  const dir = mkdtempSync(join(tmpdir(), `director-${prefix}-`));
  cpSync(join(ROOT, 'releases'), join(dir, 'releases'), { recursive: true });
  cpSync(join(ROOT, 'canaries'), join(dir, 'canaries'), { recursive: true });
  cpSync(join(ROOT, 'deployments', 'cloud-config.yml'), join(dir, 'deployments', 'cloud-config.yml'));
  const home = join(dir, 'home');
  return {
    dir,
    home,
    manifest: join(dir, 'deployments', 'hello.yml'),
    writeManifest(text: string) {
      writeFileSync(join(dir, 'deployments', 'hello.yml'), text);
      return join(dir, 'deployments', 'hello.yml');
    },
    cli: (args: string[], o: { timeoutMs?: number; env?: Record<string, string> } = {}) => runCli(args, { home, cwd: dir, ...o }),
    async cleanup() {
      await runCli(['local-cloud', 'stop'], { home, cwd: dir }).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface HelloOptions {
  instances?: number;
  azs?: string[];
  vmType?: string;
  greeting?: string;
  /** more job properties, written as YAML scalars */
  props?: Record<string, string | number | boolean>;
  canaries?: number;
  maxInFlight?: number;
  canaryWatch?: string;
  updateWatch?: string;
  autoRollback?: boolean;
}

export function helloManifest(o: HelloOptions = {}): string {
  return `name: hello
releases:
- name: hello
  path: ../releases/hello
update:
  canaries: ${o.canaries ?? 1}
  max_in_flight: ${o.maxInFlight ?? 2}
  canary_watch_time: ${o.canaryWatch ?? '200-15000'}
  update_watch_time: ${o.updateWatch ?? '100-15000'}
${o.autoRollback === undefined ? '' : `  auto_rollback: ${o.autoRollback}\n`}instance_groups:
- name: web
  instances: ${o.instances ?? 4}
  azs: [${(o.azs ?? ['z1', 'z2']).join(', ')}]
  vm_type: ${o.vmType ?? 'small'}
  jobs:
  - name: web
    release: hello
    properties:
      port: 8080
      greeting: ${o.greeting ?? 'Hello'}
${Object.entries(o.props ?? {}).map(([k, v]) => `      ${k}: ${v}\n`).join('')}  health: [http-health]
`;
}

export async function httpGet(url: string, timeoutMs = 2000): Promise<{ status: number; body: string } | null> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    return { status: res.status, body: await res.text() };
  } catch {
    return null;
  }
}

export interface RunningCli {
  child: import('node:child_process').ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** resolves with the first JSON event line that matches */
  waitForEvent(match: (e: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
}

/** Starts the CLI in the background (for kill -9, Ctrl-C and lock tests), reading --json events as they come. */
export function startCli(args: string[], opts: { home: string; cwd?: string }): RunningCli {
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'director.js'), ...args], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, DIRECTOR_HOME: opts.home, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const waiters: { match: (e: Record<string, unknown>) => boolean; resolve: (e: Record<string, unknown>) => void }[] = [];
  const seen: Record<string, unknown>[] = [];
  let partial = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d;
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      let e: Record<string, unknown>;
      try {
        e = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      seen.push(e);
      for (const w of [...waiters]) if (w.match(e)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(e); }
    }
  });
  child.stderr!.on('data', (d: Buffer) => (err += d));
  const exited = new Promise<number | null>((res) => child.on('close', (code, signal) => res(code ?? (signal ? -1 : null))));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitForEvent(match, timeoutMs = 30_000) {
      const already = seen.find(match);
      if (already) return Promise.resolve(already);
      return new Promise((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`no matching event within ${timeoutMs} ms\nstdout:\n${out}\nstderr:\n${err}`)), timeoutMs);
        waiters.push({ match, resolve: (e) => { clearTimeout(timer); res(e); } });
        void exited.then(() => setTimeout(() => rej(new Error(`director exited before the event\nstdout:\n${out}\nstderr:\n${err}`)), 50));
      });
    },
  };
}
