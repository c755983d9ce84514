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
