/**
 * Talks to the local-cloud supervisor of a director home, starting it when nobody has. The
 * supervisor is detached and outlives the CLI, so every CLI run (and every test) reconnects to
 * the same one through `<home>/local-cloud/supervisor.json`.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { DirectorError, infraError } from '../errors.js';
import {
  EXIT_ALREADY_RUNNING,
  isProcessAlive,
  localCloudPaths,
  type LocalCloudPaths,
  type LocalCloudStatus,
  type LocalVmRecord,
  type SupervisorInfo,
} from './protocol.js';

export type { LocalCloudStatus, LocalVmRecord } from './protocol.js';

export interface EnsureOptions {
  /** how long to wait for a freshly spawned supervisor to answer; default 15 s */
  startTimeoutMs?: number;
}

export interface CreateLocalVmOptions {
  tags?: Record<string, string>;
  /** OpenSSH `ssh-ed25519 AAAA…` lines the VM accepts for its ssh_user */
  authorizedKeys: string[];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

class TransportError extends Error {}

function logTail(file: string, lines = 8): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const len = Math.min(size, 4096);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, size - len);
      return buf.toString('utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '';
  }
}

function unavailable(paths: LocalCloudPaths, message: string, cause?: unknown): DirectorError {
  const tail = logTail(paths.log);
  return infraError('local_cloud_unavailable', message, {
    hint: `read the local-cloud log ${paths.log}${tail ? `; it ends with:\n${tail}` : ''}`,
    cause,
  });
}

/** Compiled entry next to this file; under vitest (sources run as .ts) the build output in dist/. */
function supervisorEntry(paths: LocalCloudPaths): string {
  const candidates = [new URL('./main.js', import.meta.url), new URL('../../dist/local-cloud/main.js', import.meta.url)];
  for (const c of candidates) {
    const p = fileURLToPath(c);
    if (fs.existsSync(p)) return p;
  }
  throw infraError('local_cloud_unavailable', `cannot find the local-cloud supervisor (looked for ${candidates.map((c) => fileURLToPath(c)).join(', ')})`, {
    hint: `build the director first: npm run build (logs go to ${paths.log})`,
  });
}

interface Lock {
  file: string;
  nonce: string;
}

/**
 * Exclusive-create lock so that, of several CLIs finding no supervisor, one spawns it and the
 * others wait. A lock whose owner died is broken by rename (only one contender can rename a given
 * file). If a break still races, the supervisor's own singleton socket makes the extra one exit.
 */
function tryLock(file: string): Lock | null {
  const nonce = `${process.pid} ${randomBytes(8).toString('hex')}`;
  try {
    const fd = fs.openSync(file, 'wx', 0o600);
    try {
      fs.writeSync(fd, nonce);
    } finally {
      fs.closeSync(fd);
    }
    return { file, nonce };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  let content: string;
  let mtimeMs: number;
  try {
    content = fs.readFileSync(file, 'utf8');
    mtimeMs = fs.statSync(file).mtimeMs;
  } catch {
    return null; // released meanwhile: the caller loops and tries again
  }
  // Empty: the owner is between create and write, unless it died right there long ago.
  const stale = content ? !isProcessAlive(Number(content.split(' ')[0])) : Date.now() - mtimeMs > 10_000;
  if (stale) {
    const moved = `${file}.stale-${randomBytes(4).toString('hex')}`;
    try {
      fs.renameSync(file, moved);
      // Someone may have replaced the stale lock between our read and rename: put theirs back.
      if (fs.readFileSync(moved, 'utf8') !== content) fs.linkSync(moved, file);
      fs.unlinkSync(moved);
    } catch {
      // lost the race to another breaker; fine
    }
  }
  return null;
}

function releaseLock(lock: Lock): void {
  try {
    if (fs.readFileSync(lock.file, 'utf8') === lock.nonce) fs.unlinkSync(lock.file);
  } catch {
    // already gone
  }
}

export class LocalCloudClient {
  private constructor(
    readonly paths: LocalCloudPaths,
    private readonly info: SupervisorInfo,
  ) {}

  /** pid of the supervisor process */
  get pid(): number {
    return this.info.pid;
  }

  get home(): string {
    return this.paths.home;
  }

  /** A client for the supervisor running for `home`, or null when none answers. */
  static async connectIfRunning(home: string): Promise<LocalCloudClient | null> {
    const paths = localCloudPaths(home);
    let info: SupervisorInfo;
    try {
      info = JSON.parse(fs.readFileSync(paths.info, 'utf8')) as SupervisorInfo;
    } catch {
      return null;
    }
    if (!isProcessAlive(info.pid)) return null;
    const client = new LocalCloudClient(paths, info);
    try {
      await client.request('GET', '/status', undefined, 3000);
      return client;
    } catch {
      // Most likely a recycled pid after a crash: treat as not running.
      return null;
    }
  }

  /** Connects to the running supervisor, or starts one (detached) and waits until it answers. */
  static async ensure(home: string, opts: EnsureOptions = {}): Promise<LocalCloudClient> {
    const paths = localCloudPaths(home);
    const startTimeoutMs = opts.startTimeoutMs ?? 15_000;
    // Waiters give the lock owner its full start timeout and a little more.
    const deadline = Date.now() + startTimeoutMs + 5000;
    fs.mkdirSync(paths.dir, { recursive: true, mode: 0o700 });
    for (;;) {
      const running = await LocalCloudClient.connectIfRunning(home);
      if (running) return running;
      const lock = tryLock(paths.startLock);
      if (lock) {
        try {
          // It may have come up between our check and taking the lock.
          const again = await LocalCloudClient.connectIfRunning(home);
          if (again) return again;
          return await LocalCloudClient.spawnSupervisor(paths, startTimeoutMs);
        } finally {
          releaseLock(lock);
        }
      }
      if (Date.now() > deadline) {
        throw unavailable(paths, `timed out waiting for another process to start the local cloud (lock ${paths.startLock})`);
      }
      await sleep(100);
    }
  }

  private static async spawnSupervisor(paths: LocalCloudPaths, timeoutMs: number): Promise<LocalCloudClient> {
    const entry = supervisorEntry(paths);
    const deadline = Date.now() + timeoutMs;
    let child = LocalCloudClient.spawnDetached(paths, entry);
    let spawnedAt = Date.now();
    while (Date.now() < deadline) {
      const client = await LocalCloudClient.connectIfRunning(paths.home);
      if (client) return client;
      if (child.exit !== null) {
        if (child.exitCode !== EXIT_ALREADY_RUNNING) {
          throw unavailable(paths, `the local-cloud supervisor ${child.exit} while starting`);
        }
        // Another supervisor holds the home. Usually it is starting and will answer soon; if it
        // was on its way out instead, the home frees up and ours has to start after all.
        if (Date.now() - spawnedAt > 1000) {
          child = LocalCloudClient.spawnDetached(paths, entry);
          spawnedAt = Date.now();
        }
      }
      await sleep(100);
    }
    throw unavailable(paths, `the local-cloud supervisor did not answer within ${timeoutMs} ms`);
  }

  private static spawnDetached(paths: LocalCloudPaths, entry: string): { exit: string | null; exitCode: number | null } {
    const status: { exit: string | null; exitCode: number | null } = { exit: null, exitCode: null };
    const out = fs.openSync(paths.log, 'a', 0o600);
    const env = { ...process.env };
    // Started from inside a local VM, the supervisor must not count as one of that VM's processes.
    delete env.DIRECTOR_LOCAL_VM;
    try {
      const child = spawn(process.execPath, [entry, paths.home], {
        detached: true,
        stdio: ['ignore', out, out],
        cwd: paths.dir,
        env,
      });
      child.once('error', (err) => (status.exit = `could not be started: ${err.message}`));
      child.once('exit', (code, signal) => {
        status.exitCode = code;
        status.exit = signal ? `was killed by ${signal}` : `exited with status ${code}`;
      });
      child.unref();
    } finally {
      fs.closeSync(out);
    }
    return status;
  }

  status(): Promise<LocalCloudStatus> {
    return this.request('GET', '/status') as Promise<LocalCloudStatus>;
  }

  createVm(opts: CreateLocalVmOptions): Promise<LocalVmRecord> {
    return this.request('POST', '/vms', { tags: opts.tags ?? {}, authorized_keys: opts.authorizedKeys }) as Promise<LocalVmRecord>;
  }

  /** VMs carrying all of the given tags (all VMs without a filter). */
  async listVms(tags?: Record<string, string>): Promise<LocalVmRecord[]> {
    const q = tags && Object.keys(tags).length ? `?tags=${encodeURIComponent(JSON.stringify(tags))}` : '';
    const res = (await this.request('GET', `/vms${q}`)) as { vms: LocalVmRecord[] };
    return res.vms;
  }

  /** null when the supervisor has no such VM */
  async getVm(cid: string): Promise<LocalVmRecord | null> {
    try {
      return (await this.request('GET', `/vms/${encodeURIComponent(cid)}`)) as LocalVmRecord;
    } catch (err) {
      if (err instanceof DirectorError && err.code === 'local_cloud_vm_not_found') return null;
      throw err;
    }
  }

  /** Kills the VM's processes and removes its root; succeeds for unknown cids. */
  async deleteVm(cid: string): Promise<void> {
    await this.request('DELETE', `/vms/${encodeURIComponent(cid)}`, undefined, 60_000);
  }

  /** Merges `tags` into the VM's tags; throws `local_cloud_vm_not_found` for unknown cids. */
  /** Fault injection: take a VM's SSH endpoint down (the VM and its jobs keep running) or back up. */
  async setSsh(cid: string, up: boolean): Promise<LocalVmRecord> {
    return (await this.request('PUT', `/vms/${encodeURIComponent(cid)}/ssh`, { up })) as LocalVmRecord;
  }

  setTags(cid: string, tags: Record<string, string>): Promise<LocalVmRecord> {
    return this.request('PUT', `/vms/${encodeURIComponent(cid)}/tags`, { tags }) as Promise<LocalVmRecord>;
  }

  /** Powers every VM off and stops the supervisor; resolves once its process is gone. */
  async stop(timeoutMs = 30_000): Promise<void> {
    try {
      await this.request('POST', '/stop');
    } catch (err) {
      if (isProcessAlive(this.pid)) throw err;
      return;
    }
    const deadline = Date.now() + timeoutMs;
    while (isProcessAlive(this.pid)) {
      if (Date.now() > deadline) throw unavailable(this.paths, `the local-cloud supervisor (pid ${this.pid}) did not exit within ${timeoutMs} ms`);
      await sleep(50);
    }
  }

  private async request(method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<unknown> {
    let res: { status: number; body: unknown };
    try {
      res = await this.send(method, path, body, timeoutMs);
    } catch (err) {
      throw unavailable(
        this.paths,
        `cannot reach the local-cloud supervisor (pid ${this.info.pid}, port ${this.info.port}): ${(err as Error).message}`,
        err,
      );
    }
    if (res.status < 300) return res.body;
    const e = (res.body as { error?: { code?: string; message?: string } } | null)?.error;
    const message = `local cloud: ${method} ${path} failed (${res.status}): ${e?.message ?? 'no details'}`;
    if (res.status === 404 && e?.code === 'vm_not_found') throw new DirectorError('local_cloud_vm_not_found', 'infrastructure', message);
    // A 4xx means we sent something the supervisor cannot take: a bug on our side.
    if (res.status < 500) throw new DirectorError('local_cloud_bad_request', 'internal', message);
    throw unavailable(this.paths, message);
  }

  private send(method: string, path: string, body: unknown, timeoutMs: number): Promise<{ status: number; body: unknown }> {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: '127.0.0.1',
          port: this.info.port,
          method,
          path,
          // A fresh connection per call: nothing stays open to keep a CLI process alive.
          agent: false,
          headers: {
            authorization: `Bearer ${this.info.token}`,
            ...(data ? { 'content-type': 'application/json', 'content-length': data.length } : {}),
          },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = null;
            try {
              parsed = text ? JSON.parse(text) : null;
            } catch {
              reject(new TransportError(`unparseable response (${res.statusCode}): ${text.slice(0, 200)}`));
              return;
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
        },
      );
      req.on('timeout', () => req.destroy(new TransportError(`no answer within ${timeoutMs} ms`)));
      req.on('error', reject);
      req.end(data);
    });
  }
}
