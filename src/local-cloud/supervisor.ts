/**
 * The local cloud's supervisor: one long-lived process hosting every local VM of a director home
 * (a process per VM would cost ~57 MB each). A VM is a loopback address, a root directory and an
 * in-process SSH endpoint; its processes are real and carry DIRECTOR_LOCAL_VM=<cid> so they can
 * be found again. State lives in `<home>/local-cloud/state.json` so a restarted supervisor brings
 * back the same VMs (cid, IP, host key, tags) and "boots" them by running their etc/rc.local.
 *
 * Linux only for now: macOS configures just 127.0.0.1 on lo0 (other addresses need
 * `ifconfig lo0 alias`) and has no /proc or abstract sockets.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import ssh2 from 'ssh2';
import { generateEd25519 } from '../ssh/keys.js';
import { killVmProcesses } from './processes.js';
import {
  DEFAULT_SSH_PORT,
  localCloudPaths,
  singletonSocketName,
  type CreateVmBody,
  type LocalCloudPaths,
  type LocalCloudStatus,
  type LocalVmRecord,
  type SupervisorInfo,
} from './protocol.js';
import { parseAuthorizedKeys, vmEnvironment, VmSshEndpoint } from './ssh-endpoint.js';

const { utils } = ssh2;

/** What state.json keeps per VM; the host private key is why the file is mode 0600. */
interface StoredVm {
  cid: string;
  ip: string;
  ssh_port: number;
  host_key: string;
  host_key_fingerprint: string;
  authorized_keys: string[];
  tags: Record<string, string>;
  created_at: string;
}

interface StoredState {
  version: 1;
  /** next host number to try in the subnet; only counts up, so a deleted VM's address is not reused at once */
  next_host: number;
  vms: StoredVm[];
}

interface RunningVm {
  record: StoredVm;
  endpoint: VmSshEndpoint | null;
  error?: string;
}

export class SupervisorAlreadyRunningError extends Error {
  constructor(home: string) {
    super(`another local-cloud supervisor is already running for ${home}`);
    this.name = 'SupervisorAlreadyRunningError';
  }
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface SupervisorOptions {
  home: string;
  /** default: env DIRECTOR_LOCAL_SSH_PORT, else 2222 */
  sshPort?: number;
  /** `127.<B>`; default: env DIRECTOR_LOCAL_SUBNET, else derived from the home path */
  subnet?: string;
  logger?: Logger;
  /** how long deleteVm/stop wait after SIGTERM before SIGKILL */
  killGraceMs?: number;
}

export interface CreateVmRequest {
  tags?: Record<string, string>;
  authorizedKeys: string[];
}

const MAX_HOST = 0xfffe;
const FIRST_HOST = 2;
/** consecutive unbindable addresses before we conclude the port itself is unusable */
const MAX_BIND_ATTEMPTS = 64;

export function sshFingerprint(publicKeyBlob: Buffer): string {
  return `SHA256:${createHash('sha256').update(publicKeyBlob).digest('base64').replace(/=+$/, '')}`;
}

/**
 * Second octet for a home: hashed from its absolute path so two homes on one machine (parallel
 * test runs, two checkouts) get disjoint address ranges and can both use port 2222.
 */
export function subnetForHome(home: string, override = process.env.DIRECTOR_LOCAL_SUBNET): string {
  if (override) {
    const m = /^127\.(\d{1,3})$/.exec(override.trim());
    const b = m ? Number(m[1]) : NaN;
    if (!(b >= 0 && b <= 254)) throw new Error(`DIRECTOR_LOCAL_SUBNET must look like 127.<0-254>, got ${override}`);
    return `127.${b}`;
  }
  const h = createHash('sha256').update(path.resolve(home)).digest().readUInt32BE(0);
  return `127.${2 + (h % 249)}`;
}

function sshPortFromEnv(): number {
  const v = process.env.DIRECTOR_LOCAL_SSH_PORT;
  if (!v) return DEFAULT_SSH_PORT;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new Error(`DIRECTOR_LOCAL_SSH_PORT must be a port number, got ${v}`);
  return n;
}

/** Host number n ↦ `<C>.<D>`; D skips 0 and 255 so addresses look like ordinary host addresses. */
function hostAddress(subnet: string, n: number): string {
  return `${subnet}.${n >> 8}.${n & 0xff}`;
}
function nextHost(n: number): number {
  let m = n + 1;
  if ((m & 0xff) === 0xff) m += 2;
  else if ((m & 0xff) === 0) m += 1;
  return m > MAX_HOST ? FIRST_HOST : m;
}

/**
 * ssh2 1.17's generateKeyPairSync('ed25519') drops a leading zero byte of the public key, so about
 * 1 key in 256 comes out malformed (its own parseKey rejects it, and so would the server). Such
 * keys are simply discarded.
 */
export function generateHostKey(): { keys: { private: string; public: string }; parsedPub: ssh2.ParsedKey } {
  const { parsedPub, ...keys } = generateEd25519();
  return { keys, parsedPub };
}

function writeFileAtomic(file: string, data: string, mode = 0o600): void {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = fs.openSync(tmp, 'w', mode);
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

function isStringRecord(v: unknown): v is Record<string, string> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
}

export function matchesTags(tags: Record<string, string>, filter: Record<string, string> | undefined): boolean {
  if (!filter) return true;
  return Object.entries(filter).every(([k, v]) => tags[k] === v);
}

export class LocalCloudSupervisor {
  readonly paths: LocalCloudPaths;
  readonly sshPort: number;
  readonly subnet: string;
  readonly user = os.userInfo().username;
  private readonly log: Logger;
  private readonly killGraceMs: number;
  private readonly vms = new Map<string, RunningVm>();
  private state: StoredState = { version: 1, next_host: FIRST_HOST, vms: [] };
  private api: http.Server | null = null;
  private singleton: net.Server | null = null;
  private token = '';
  private startedAt = '';
  /** serializes address allocation: binding is async and two creates must not pick one address */
  private allocation: Promise<unknown> = Promise.resolve();
  private stopping: Promise<void> | null = null;
  private resolveStopped!: () => void;
  /** settles once stop() has finished; main.ts exits then */
  readonly stopped: Promise<void> = new Promise((r) => (this.resolveStopped = r));

  constructor(opts: SupervisorOptions) {
    this.paths = localCloudPaths(opts.home);
    this.sshPort = opts.sshPort ?? sshPortFromEnv();
    this.subnet = opts.subnet ?? subnetForHome(this.paths.home);
    this.killGraceMs = opts.killGraceMs ?? 5000;
    fs.mkdirSync(this.paths.vms, { recursive: true, mode: 0o700 });
    this.log =
      opts.logger ??
      pino({ base: { pid: process.pid } }, pino.destination({ dest: this.paths.log, append: true, sync: true, mkdir: true }));
  }

  async start(): Promise<void> {
    await this.claimHome();
    this.loadState();
    this.startedAt = new Date().toISOString();
    this.log.info({ home: this.paths.home, subnet: this.subnet, ssh_port: this.sshPort, vms: this.state.vms.length }, 'starting');

    for (const record of this.state.vms) {
      const vm: RunningVm = { record, endpoint: null };
      this.vms.set(record.cid, vm);
    }
    // Leftovers of a supervisor that died without powering its VMs off would clash with what
    // rc.local starts again: a boot begins from a clean slate, as a real reboot does.
    try {
      const leftovers = await killVmProcesses(new Set(this.vms.keys()), { graceMs: this.killGraceMs });
      if (leftovers.length) this.log.warn({ pids: leftovers }, 'killed processes left over from a previous supervisor');
    } catch (err) {
      this.log.error({ err }, 'processes left over from a previous supervisor would not die');
    }

    await Promise.all([...this.vms.values()].map((vm) => this.bootVm(vm)));
    for (const vm of this.vms.values()) if (vm.endpoint) this.runRcLocal(vm.record);

    await this.startApi();
    this.log.info({ port: (this.api!.address() as net.AddressInfo).port }, 'started');
  }

  /** Powers every VM off (kills its processes, closes its endpoint), keeps the records. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info('stopping');
      await Promise.all([...this.vms.values()].map((vm) => vm.endpoint?.close()));
      for (const vm of this.vms.values()) vm.endpoint = null;
      try {
        await killVmProcesses(new Set(this.vms.keys()), { graceMs: this.killGraceMs });
      } catch (err) {
        this.log.error({ err }, 'some VM processes would not die');
      }
      if (this.api) {
        const api = this.api;
        await new Promise<void>((r) => {
          api.close(() => r());
          api.closeAllConnections();
        });
      }
      try {
        const info = JSON.parse(fs.readFileSync(this.paths.info, 'utf8')) as SupervisorInfo;
        if (info.pid === process.pid) fs.rmSync(this.paths.info, { force: true });
      } catch {
        // not written yet, or already replaced by a newer supervisor
      }
      this.singleton?.close();
      this.log.info('stopped');
      this.resolveStopped();
    })();
    return this.stopping;
  }

  status(): LocalCloudStatus {
    return {
      pid: process.pid,
      home: this.paths.home,
      started_at: this.startedAt,
      subnet: this.subnet,
      ssh_port: this.sshPort,
      vms: this.vms.size,
    };
  }

  listVms(tags?: Record<string, string>): LocalVmRecord[] {
    return [...this.vms.values()].filter((vm) => matchesTags(vm.record.tags, tags)).map((vm) => this.toRecord(vm));
  }

  getVm(cid: string): LocalVmRecord | undefined {
    const vm = this.vms.get(cid);
    return vm && this.toRecord(vm);
  }

  async createVm(req: CreateVmRequest): Promise<LocalVmRecord> {
    if (this.stopping) throw new HttpError(503, 'stopping', 'the local cloud is stopping');
    parseAuthorizedKeys(req.authorizedKeys); // fail before allocating anything
    let cid: string;
    do cid = `local-${randomBytes(4).toString('hex')}`;
    while (this.vms.has(cid));
    const { keys, parsedPub } = generateHostKey();
    const root = this.vmRoot(cid);
    fs.mkdirSync(path.join(root, 'etc'), { recursive: true, mode: 0o755 });
    fs.mkdirSync(path.join(root, 'var', 'log'), { recursive: true });
    fs.mkdirSync(path.join(root, 'tmp'), { recursive: true });

    const record: StoredVm = {
      cid,
      ip: '',
      ssh_port: this.sshPort,
      host_key: keys.private,
      host_key_fingerprint: sshFingerprint(parsedPub.getPublicSSH()),
      authorized_keys: [...req.authorizedKeys],
      tags: { ...(req.tags ?? {}) },
      created_at: new Date().toISOString(),
    };
    const vm: RunningVm = { record, endpoint: null };
    const run = this.allocation.then(() => this.allocateAndListen(vm));
    this.allocation = run.catch(() => {});
    try {
      await run;
    } catch (err) {
      fs.rmSync(root, { recursive: true, force: true });
      throw err;
    }
    this.log.info({ cid, ip: record.ip, tags: record.tags }, 'vm created');
    return this.toRecord(vm);
  }

  /** Deleting an unknown cid succeeds: callers retry deletes after crashes. */
  async deleteVm(cid: string): Promise<void> {
    const vm = this.vms.get(cid);
    if (!vm) return;
    await vm.endpoint?.close();
    vm.endpoint = null;
    const killed = await killVmProcesses(new Set([cid]), { graceMs: this.killGraceMs });
    fs.rmSync(this.vmRoot(cid), { recursive: true, force: true });
    // A concurrent delete of the same cid may have finished first.
    if (this.vms.delete(cid)) this.saveState();
    this.log.info({ cid, killed: killed.length }, 'vm deleted');
  }

  setTags(cid: string, tags: Record<string, string>): LocalVmRecord | undefined {
    const vm = this.vms.get(cid);
    if (!vm) return undefined;
    vm.record.tags = { ...vm.record.tags, ...tags };
    this.saveState();
    return this.toRecord(vm);
  }

  // ---------------------------------------------------------------------------------------------

  private vmRoot(cid: string): string {
    return path.join(this.paths.vms, cid);
  }

  private toRecord(vm: RunningVm): LocalVmRecord {
    const r = vm.record;
    const out: LocalVmRecord = {
      cid: r.cid,
      ip: r.ip,
      ssh_port: r.ssh_port,
      ssh_user: this.user,
      host_key_fingerprint: r.host_key_fingerprint,
      tags: { ...r.tags },
      created_at: r.created_at,
      root: this.vmRoot(r.cid),
      state: vm.endpoint ? 'running' : 'stopped',
    };
    if (vm.error) out.error = vm.error;
    return out;
  }

  private async claimHome(): Promise<void> {
    const srv = net.createServer();
    await new Promise<void>((resolve, reject) => {
      srv.once('error', (err: NodeJS.ErrnoException) =>
        reject(err.code === 'EADDRINUSE' ? new SupervisorAlreadyRunningError(this.paths.home) : err),
      );
      srv.listen(singletonSocketName(this.paths.home), () => resolve());
    });
    // Nobody connects to it; it only has to exist while we live.
    srv.on('connection', (s) => s.destroy());
    srv.unref();
    this.singleton = srv;
  }

  private loadState(): void {
    let raw: string;
    try {
      raw = fs.readFileSync(this.paths.state, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    const parsed = JSON.parse(raw) as StoredState;
    if (parsed.version !== 1 || !Array.isArray(parsed.vms)) throw new Error(`unrecognised ${this.paths.state}`);
    this.state = parsed;
  }

  private saveState(): void {
    this.state.vms = [...this.vms.values()].map((vm) => vm.record);
    writeFileAtomic(this.paths.state, `${JSON.stringify(this.state, null, 2)}\n`);
  }

  private endpointFor(record: StoredVm): VmSshEndpoint {
    return new VmSshEndpoint({
      cid: record.cid,
      ip: record.ip,
      port: record.ssh_port,
      root: this.vmRoot(record.cid),
      user: this.user,
      hostKey: record.host_key,
      authorizedKeys: record.authorized_keys,
      logger: this.log.child({ cid: record.cid }),
    });
  }

  private async bootVm(vm: RunningVm): Promise<void> {
    // Commands run with the root as cwd: a root removed behind our back would fail every exec.
    fs.mkdirSync(path.join(this.vmRoot(vm.record.cid), 'var', 'log'), { recursive: true });
    const endpoint = this.endpointFor(vm.record);
    try {
      await endpoint.listen();
      vm.endpoint = endpoint;
      delete vm.error;
    } catch (err) {
      // Keep the record: the address may be free again on the next start.
      vm.error = `cannot listen on ${vm.record.ip}:${vm.record.ssh_port}: ${(err as Error).message}`;
      this.log.error({ cid: vm.record.cid, err }, 'vm failed to boot');
    }
  }

  private async allocateAndListen(vm: RunningVm): Promise<void> {
    const inUse = new Set([...this.vms.values()].map((v) => v.record.ip));
    let host = this.state.next_host;
    let failures = 0;
    let lastError: Error | undefined;
    for (let scanned = 0; scanned <= MAX_HOST; scanned++, host = nextHost(host)) {
      const ip = hostAddress(this.subnet, host);
      if (inUse.has(ip)) continue;
      vm.record.ip = ip;
      const endpoint = this.endpointFor(vm.record);
      try {
        await endpoint.listen();
        vm.endpoint = endpoint;
        this.state.next_host = nextHost(host);
        // Registered before the next allocation may run, so it sees this address as taken.
        this.vms.set(vm.record.cid, vm);
        this.saveState();
        return;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EADDRINUSE' && code !== 'EADDRNOTAVAIL') throw err;
        lastError = err as Error;
        // Something listening on 0.0.0.0:<port> makes every address fail: stop rather than scan 65k.
        if (++failures >= MAX_BIND_ATTEMPTS) break;
      }
    }
    throw new HttpError(
      503,
      'no_address',
      `no free address in ${this.subnet}.0.0/16 for SSH port ${this.sshPort} (${lastError?.message ?? 'all taken'}); ` +
        'set DIRECTOR_LOCAL_SSH_PORT or DIRECTOR_LOCAL_SUBNET',
    );
  }

  /** The VM's init: detached, so the jobs it starts belong to the VM, not to this process. */
  private runRcLocal(record: StoredVm): void {
    const root = this.vmRoot(record.cid);
    const rc = path.join(root, 'etc', 'rc.local');
    try {
      fs.accessSync(rc, fs.constants.X_OK);
      if (!fs.statSync(rc).isFile()) return;
    } catch {
      return;
    }
    const logDir = path.join(root, 'var', 'log');
    fs.mkdirSync(logDir, { recursive: true });
    const out = fs.openSync(path.join(logDir, 'rc.local.log'), 'a');
    try {
      // Through sh so that an rc.local without a shebang still runs, as a shell script.
      const child = spawn('/bin/sh', ['-c', 'exec "$0"', rc], {
        cwd: root,
        env: vmEnvironment(record.cid, root, this.user),
        stdio: ['ignore', out, out],
        detached: true,
      });
      child.on('error', (err) => this.log.error({ cid: record.cid, err }, 'rc.local failed to start'));
      child.on('exit', (code, signal) => this.log.info({ cid: record.cid, code, signal }, 'rc.local finished'));
      child.unref();
    } finally {
      fs.closeSync(out);
    }
  }

  // --- control API -----------------------------------------------------------------------------

  private async startApi(): Promise<void> {
    this.token = randomBytes(32).toString('hex');
    const api = http.createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        const status = err instanceof HttpError ? err.status : 500;
        const code = err instanceof HttpError ? err.code : 'internal';
        if (status >= 500) this.log.error({ err, method: req.method, url: req.url }, 'request failed');
        send(res, status, { error: { code, message: (err as Error).message } });
      });
    });
    await new Promise<void>((resolve, reject) => {
      api.once('error', reject);
      api.listen(0, '127.0.0.1', () => resolve());
    });
    this.api = api;
    const info: SupervisorInfo = {
      pid: process.pid,
      port: (api.address() as net.AddressInfo).port,
      token: this.token,
      started_at: this.startedAt,
    };
    // Written last: a client that can read it may use the API at once.
    writeFileAtomic(this.paths.info, `${JSON.stringify(info)}\n`, 0o600);
  }

  private authorized(req: http.IncomingMessage): boolean {
    const got = Buffer.from(req.headers.authorization ?? '');
    const want = Buffer.from(`Bearer ${this.token}`);
    return got.length === want.length && timingSafeEqual(got, want);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!this.authorized(req)) throw new HttpError(401, 'unauthorized', 'missing or wrong bearer token');
    const url = new URL(req.url ?? '/', 'http://local');
    let parts: string[];
    try {
      parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    } catch {
      throw new HttpError(400, 'bad_request', `malformed path ${url.pathname}`);
    }
    const method = req.method ?? 'GET';

    if (parts.length === 1 && parts[0] === 'status' && method === 'GET') return send(res, 200, this.status());
    if (parts.length === 1 && parts[0] === 'stop' && method === 'POST') {
      send(res, 202, { stopping: true });
      void this.stop();
      return;
    }
    if (parts[0] !== 'vms') throw new HttpError(404, 'not_found', `no route ${method} ${url.pathname}`);

    if (parts.length === 1 && method === 'GET') {
      const raw = url.searchParams.get('tags');
      let filter: unknown;
      try {
        filter = raw ? JSON.parse(raw) : undefined;
      } catch {
        filter = null;
      }
      if (filter !== undefined && !isStringRecord(filter)) throw new HttpError(400, 'bad_request', 'tags must be a JSON object of strings');
      return send(res, 200, { vms: this.listVms(filter) });
    }
    if (parts.length === 1 && method === 'POST') {
      const body = (await readJson(req)) as Partial<CreateVmBody>;
      if (body.tags !== undefined && !isStringRecord(body.tags)) throw new HttpError(400, 'bad_request', 'tags must be an object of strings');
      const keys = body.authorized_keys;
      if (!Array.isArray(keys) || keys.length === 0 || !keys.every((k) => typeof k === 'string')) {
        throw new HttpError(400, 'bad_request', 'authorized_keys must be a non-empty array of OpenSSH public keys');
      }
      try {
        parseAuthorizedKeys(keys);
      } catch (err) {
        throw new HttpError(400, 'bad_request', (err as Error).message);
      }
      return send(res, 201, await this.createVm({ tags: body.tags ?? {}, authorizedKeys: keys }));
    }
    const cid = parts[1]!;
    if (parts.length === 2 && method === 'GET') {
      const vm = this.getVm(cid);
      if (!vm) throw new HttpError(404, 'vm_not_found', `no VM ${cid}`);
      return send(res, 200, vm);
    }
    if (parts.length === 2 && method === 'DELETE') {
      await this.deleteVm(cid);
      return send(res, 200, { deleted: cid });
    }
    if (parts.length === 3 && parts[2] === 'ssh' && method === 'PUT') {
      // Fault injection: the VM keeps running, only its SSH endpoint goes away (or comes back).
      const body = (await readJson(req)) as { up?: unknown };
      if (typeof body.up !== 'boolean') throw new HttpError(400, 'bad_request', 'up must be true or false');
      const vm = this.vms.get(cid);
      if (!vm) throw new HttpError(404, 'vm_not_found', `no VM ${cid}`);
      if (!body.up && vm.endpoint) {
        await vm.endpoint.close();
        vm.endpoint = null;
      } else if (body.up && !vm.endpoint) {
        await this.bootVm(vm);
      }
      return send(res, 200, this.getVm(cid));
    }
    if (parts.length === 3 && parts[2] === 'tags' && method === 'PUT') {
      const body = (await readJson(req)) as { tags?: unknown };
      if (!isStringRecord(body.tags)) throw new HttpError(400, 'bad_request', 'tags must be an object of strings');
      const vm = this.setTags(cid, body.tags);
      if (!vm) throw new HttpError(404, 'vm_not_found', `no VM ${cid}`);
      return send(res, 200, vm);
    }
    throw new HttpError(404, 'not_found', `no route ${method} ${url.pathname}`);
  }
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return;
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
  res.end(data);
}

async function readJson(req: http.IncomingMessage, limit = 1 << 20): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HttpError(413, 'too_large', 'request body too large');
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new HttpError(400, 'bad_request', 'body is not valid JSON');
  }
}
