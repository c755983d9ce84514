/**
 * Provider adapter for machines that already exist (on-premises, BOSH's "manual" networks): the
 * director cannot create or destroy them, only assign a free one from the cloud-config's pool to
 * an instance and give it back, cleaned, when the instance is deleted.
 *
 * The truth is kept twice: `<home>/static/<cloud>.json` (pool.ts) and a marker file
 * `<base_dir>/.director-assignment` on each assigned host, so a lost state file cannot make two
 * instances share a host: a host whose marker names another instance is never claimed.
 */
import { readFileSync } from 'node:fs';
import { DirectorError, infraError, userError } from '../../errors.js';
import { InstanceAgent } from '../../instance/agent.js';
import { StepError, type InstanceConnector, type InstanceHandle, type LogFn } from '../../instance/driver.js';
import { Ssh2Connector, type Ssh2ConnectorOptions } from '../../ssh/connection.js';
import { shq } from '../../ssh/quote.js';
import type { SshConnection, SshConnector, SshTarget } from '../../ssh/types.js';
import type { VmRow } from '../../state/store.js';
import { TAG_INSTANCE_ID, type Provider, type Vm, type VmRequest } from '../provider.js';
import { parseStaticProperties, type StaticConfig, type StaticHost } from './config.js';
import { PoolFile, type Assignment } from './pool.js';

export { parseStaticProperties, staticCid, type StaticConfig, type StaticHost } from './config.js';

export const TAG_AZ = 'az';
export const MARKER = '.director-assignment';

export interface StaticProviderOptions {
  /** name of the cloud in the cloud-config */
  cloud: string;
  /** the director home: state in `<home>/static/<cloud>.json`, default key in `<home>/keys/` */
  home: string;
  /** the cloud-config entry's properties (validated here) */
  properties: Record<string, unknown>;
  /** for tests: a connector with other limits */
  ssh?: SshConnector;
  sshOptions?: Ssh2ConnectorOptions;
}

/** The directory expression for a remote shell: relative paths are under the user's $HOME. */
function baseExpr(baseDir: string): string {
  return baseDir.startsWith('/') ? shq(baseDir) : `"$HOME"/${shq(baseDir)}`;
}

export class StaticProvider implements Provider {
  readonly cloud: string;
  readonly type = 'static';
  readonly config: StaticConfig;
  readonly pool: PoolFile;
  private readonly ssh: SshConnector;
  private privateKey: string | undefined;
  private bastion: Promise<SshTarget> | undefined;
  private readonly connector: StaticInstanceConnector;

  constructor(opts: StaticProviderOptions) {
    this.cloud = opts.cloud;
    this.config = parseStaticProperties(opts.cloud, opts.properties, opts.home);
    this.pool = new PoolFile(opts.home, opts.cloud);
    this.ssh = opts.ssh ?? new Ssh2Connector(opts.sshOptions);
    this.connector = new StaticInstanceConnector(this);
  }

  instances(): InstanceConnector {
    return this.connector;
  }

  async create(req: VmRequest): Promise<Vm> {
    const tags: Record<string, string> = { ...req.tags, [TAG_AZ]: req.az };
    // Each pass claims one host; a host whose marker shows it is in use by another instance
    // (state file lost or shared) is adopted as assigned and the next free one is tried.
    for (let pass = 0; pass <= this.config.hosts.length; pass++) {
      const host = await this.claim(tags, req.az);
      const marker = JSON.stringify({ cloud: this.cloud, cid: host.cid, tags, assigned_at: new Date().toISOString() });
      let occupied: string | undefined;
      try {
        occupied = await this.onHost(host, async (conn) => {
          const b = baseExpr(host.baseDir);
          const m = `${b}/${MARKER}`;
          const mine = shq(`"${TAG_INSTANCE_ID}":${JSON.stringify(tags[TAG_INSTANCE_ID] ?? '')}`);
          const r = await conn.exec(
            `mkdir -p ${b} && if [ -s ${m} ] && ! grep -qF ${mine} ${m}; then echo OCCUPIED; cat ${m}; exit 0; fi; cat > ${m}.tmp && mv -f ${m}.tmp ${m} && echo CLAIMED`,
            { stdin: marker, timeoutMs: 60_000 },
          );
          if (r.code !== 0 || !/^(OCCUPIED|CLAIMED)/.test(r.stdout)) {
            throw infraError('static_marker_failed', `cloud '${this.cloud}': writing ${host.baseDir}/${MARKER} on ${host.address}:${host.port} failed (exit ${r.code ?? r.signal}): ${(r.stderr || r.stdout).trim().split('\n').pop() ?? ''}`, {
              hint: `the SSH user ${host.user} must be able to create ${host.baseDir} on the host; set base_dir for the host to a directory it may write`,
            });
          }
          return r.stdout.startsWith('OCCUPIED') ? r.stdout.slice('OCCUPIED\n'.length) : undefined;
        });
      } catch (err) {
        await this.pool.update((s) => {
          delete s.assignments[host.cid];
        });
        throw err;
      }
      if (occupied === undefined) return this.toVm(this.pool.read().assignments[host.cid]!, host);
      await this.pool.update((s) => {
        let theirs: Record<string, string> = {};
        try {
          theirs = (JSON.parse(occupied!) as { tags?: Record<string, string> }).tags ?? {};
        } catch {
          // an unreadable marker still means "someone's": keep the host away from the pool
        }
        const a = s.assignments[host.cid]!;
        a.tags = theirs;
        a.az = theirs[TAG_AZ] ?? a.az;
      });
    }
    throw this.exhausted(this.pool.read());
  }

  async list(tags: Record<string, string>): Promise<Vm[]> {
    const state = this.pool.read();
    return Object.values(state.assignments)
      .filter((a) => Object.entries(tags).every(([k, v]) => a.tags[k] === v))
      .map((a) => this.toVm(a, this.host(a.cid) ?? this.hostOf(a)));
  }

  async delete(cid: string): Promise<void> {
    const a = this.pool.read().assignments[cid];
    if (!a) return; // never assigned, or already returned to the pool
    const host = this.host(cid);
    if (host) {
      await this.onHost(host, async (conn) => {
        const b = baseExpr(host.baseDir);
        // Stop what the director started, then remove what it installed: only its base dir.
        const r = await conn.exec(`if [ -x ${b}/bin/ctl ]; then ${b}/bin/ctl stop || exit 1; fi; rm -rf ${b}`, { timeoutMs: 3 * 60_000 });
        if (r.code !== 0) {
          throw infraError('static_cleanup_failed', `cloud '${this.cloud}': cleaning ${host.address}:${host.port} (stop jobs, remove ${host.baseDir}) failed (exit ${r.code ?? r.signal}): ${(r.stderr || r.stdout).trim().split('\n').pop() ?? ''}`, {
            hint: 'the host stays assigned; fix it (see the output) and delete again',
          });
        }
      });
    }
    // A host removed from the cloud-config is only forgotten: the director no longer manages it.
    await this.pool.update((s) => {
      delete s.assignments[cid];
    });
  }

  async exists(cid: string): Promise<boolean> {
    const a = this.pool.read().assignments[cid];
    const host = a ? (this.host(cid) ?? this.hostOf(a)) : undefined;
    if (!host) return false;
    try {
      await this.onHost(host, async () => undefined);
      return true;
    } catch (err) {
      if (err instanceof DirectorError && err.code === 'ssh_host_key_mismatch') throw err;
      return false;
    }
  }

  async setMetadata(cid: string, tags: Record<string, string>): Promise<void> {
    const a = this.pool.read().assignments[cid];
    if (!a) throw infraError('static_host_not_assigned', `cloud '${this.cloud}': ${cid} is not assigned to any instance`, { hint: 'only assigned hosts carry tags' });
    const merged = await this.pool.update((s) => {
      const cur = s.assignments[cid];
      if (!cur) return undefined;
      cur.tags = { ...cur.tags, ...tags };
      return cur;
    });
    if (!merged) return;
    const host = this.host(cid) ?? this.hostOf(merged);
    const marker = JSON.stringify({ cloud: this.cloud, cid, tags: merged.tags, assigned_at: merged.assignedAt });
    await this.onHost(host, async (conn) => {
      const m = `${baseExpr(host.baseDir)}/${MARKER}`;
      const r = await conn.exec(`mkdir -p ${baseExpr(host.baseDir)} && cat > ${m}.tmp && mv -f ${m}.tmp ${m}`, { stdin: marker, timeoutMs: 60_000 });
      if (r.code !== 0) throw infraError('static_marker_failed', `cloud '${this.cloud}': updating ${host.baseDir}/${MARKER} on ${host.address}:${host.port} failed: ${r.stderr.trim()}`);
    });
  }

  async close(): Promise<void> {
    // Connections are per call and closed after it; nothing stays open.
  }

  /** The SSH target of a host: the pinned key (cloud-config, else first contact) and the bastion. */
  async target(host: { address: string; port: number; user: string; cid: string; hostKey?: string }, opts: { label?: string; hostKey?: string } = {}): Promise<SshTarget> {
    return {
      host: host.address,
      port: host.port,
      username: host.user,
      privateKey: this.key(),
      hostKeyFingerprint: opts.hostKey ?? host.hostKey ?? this.pool.read().hostKeys[host.cid],
      label: opts.label,
      jump: await this.jumpTarget(),
    };
  }

  /** The provider's connector: its handshake limits are shared by its own calls and the instances'. */
  connect(target: SshTarget): Promise<SshConnection> {
    return this.ssh.connect(target);
  }

  /** Runs fn over one connection to the host, pinning its key on first contact. */
  private async onHost<T>(host: StaticHost, fn: (conn: SshConnection) => Promise<T>): Promise<T> {
    const target = await this.target(host);
    const conn = await this.ssh.connect(target);
    try {
      if (target.hostKeyFingerprint === undefined) await this.pinKey(host.cid, conn.hostKeyFingerprint);
      return await fn(conn);
    } finally {
      conn.close();
    }
  }

  private async pinKey(key: string, fingerprint: string): Promise<void> {
    if (!fingerprint) return;
    await this.pool.update((s) => {
      s.hostKeys[key] ??= fingerprint;
    });
  }

  private jumpTarget(): Promise<SshTarget> | undefined {
    const b = this.config.bastion;
    if (!b) return undefined;
    this.bastion ??= (async () => {
      const pinKey = `bastion ${b.address}:${b.port}`;
      const t: SshTarget = {
        host: b.address,
        port: b.port,
        username: b.user,
        privateKey: this.key(),
        hostKeyFingerprint: b.hostKey ?? this.pool.read().hostKeys[pinKey],
        label: `jump host ${b.user}@${b.address}`,
      };
      if (t.hostKeyFingerprint === undefined) {
        // First contact with the bastion: learn its key once, then every hop is pinned to it.
        const conn = await this.ssh.connect(t);
        conn.close();
        await this.pinKey(pinKey, conn.hostKeyFingerprint);
        t.hostKeyFingerprint = conn.hostKeyFingerprint;
      }
      return t;
    })().catch((err: unknown) => {
      this.bastion = undefined;
      throw err;
    });
    return this.bastion;
  }

  private key(): string {
    if (this.privateKey === undefined) {
      try {
        this.privateKey = readFileSync(this.config.privateKeyPath, 'utf8');
      } catch (e) {
        throw userError('static_private_key_unreadable', `cloud '${this.cloud}': cannot read private_key ${this.config.privateKeyPath}: ${(e as Error).message}`, {
          hint: "private_key is the path of an OpenSSH private key (never the key itself) whose public half is in each host's authorized_keys",
          cause: e,
        });
      }
    }
    return this.privateKey;
  }

  private host(cid: string): StaticHost | undefined {
    return this.config.hosts.find((h) => h.cid === cid);
  }

  /** A host that left the cloud-config but is still assigned: reached as it was recorded. */
  private hostOf(a: Assignment): StaticHost {
    return { address: a.address, port: a.port, user: a.user, baseDir: a.baseDir, cid: a.cid };
  }

  private async claim(tags: Record<string, string>, az: string): Promise<StaticHost> {
    return this.pool.update((s) => {
      const free = this.config.hosts.find((h) => !s.assignments[h.cid]);
      if (!free) throw this.exhausted(s);
      s.assignments[free.cid] = {
        cid: free.cid,
        address: free.address,
        port: free.port,
        user: free.user,
        baseDir: free.baseDir,
        az,
        tags,
        assignedAt: new Date().toISOString(),
      };
      return free;
    });
  }

  private exhausted(s: { assignments: Record<string, Assignment> }): DirectorError {
    const size = this.config.hosts.length;
    const assigned = this.config.hosts.filter((h) => s.assignments[h.cid]).length;
    return infraError('static_pool_exhausted', `cloud '${this.cloud}': no free host in the static pool (${size} hosts, ${assigned} assigned)`, {
      hint: `add hosts to cloud '${this.cloud}' in the cloud-config, or lower the instances placed on it`,
    });
  }

  private toVm(a: Assignment, host: StaticHost): Vm {
    return {
      cid: a.cid,
      cloud: this.cloud,
      az: a.tags[TAG_AZ] ?? a.az,
      ips: [host.address],
      sshHost: host.address,
      sshPort: host.port,
      sshUser: host.user,
      hostKeyFingerprint: host.hostKey ?? this.pool.read().hostKeys[a.cid],
      tags: a.tags,
      state: 'running',
      baseDir: host.baseDir,
      createdAt: a.assignedAt,
    };
  }
}

/** Opens instance sessions with the cloud's key, through its bastion, to the pinned host key. */
class StaticInstanceConnector implements InstanceConnector {
  constructor(private readonly provider: StaticProvider) {}

  async open(vm: VmRow, opts: { label: string; baseDir: string; log: LogFn }): Promise<InstanceHandle> {
    try {
      const target = await this.provider.target(
        { address: vm.sshHost, port: vm.sshPort, user: vm.sshUser, cid: vm.cid },
        { label: opts.label, hostKey: vm.hostKey ?? undefined },
      );
      const conn = await this.provider.connect(target);
      return new InstanceAgent(conn, opts.baseDir, opts.log);
    } catch (err) {
      const e = err instanceof DirectorError ? err : infraError('ssh_unreachable', String(err), { cause: err });
      throw new StepError('connect', 'infrastructure', e.code, e.message, [], { hint: e.hint, cause: err });
    }
  }
}
