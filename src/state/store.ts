/** Deployments, instances and VMs as the director recorded them. */
import type { Db } from './db.js';
import type { AppliedSpec, InstanceState } from '../plan/types.js';
import type { CloudDef } from '../manifest/types.js';

export interface InstanceRow {
  id: string;
  deployment: string;
  group: string;
  index: number;
  az: string;
  cloud: string;
  vmCid: string | null;
  state: InstanceState;
  /** what the last successful update applied */
  applied: AppliedSpec | null;
  /** what was applied before that: the target of a rollback */
  previous: AppliedSpec | null;
  error: string | null;
  updatedAt: string;
}

export interface VmRow {
  cloud: string;
  cid: string;
  deployment: string;
  instanceId: string | null;
  az: string;
  ips: string[];
  sshHost: string;
  sshPort: number;
  sshUser: string;
  hostKey: string | null;
  /** the provider's per-VM base directory, if it set one */
  baseDir?: string | null;
  createdAt: string;
}

export interface DeploymentRow {
  name: string;
  /** the cloud definitions the deployment was last deployed with, to reach its VMs later */
  clouds: CloudDef[];
  manifestFile: string;
  cloudConfigFile: string;
  createdAt: string;
  updatedAt: string;
}

type Raw = Record<string, unknown>;

const toInstance = (r: Raw): InstanceRow => ({
  id: r.id as string,
  deployment: r.deployment as string,
  group: r.grp as string,
  index: r.idx as number,
  az: r.az as string,
  cloud: r.cloud as string,
  vmCid: (r.vm_cid as string | null) ?? null,
  state: r.state as InstanceState,
  applied: r.applied ? (JSON.parse(r.applied as string) as AppliedSpec) : null,
  previous: r.previous ? (JSON.parse(r.previous as string) as AppliedSpec) : null,
  error: (r.error as string | null) ?? null,
  updatedAt: r.updated_at as string,
});

const toVm = (r: Raw): VmRow => ({
  cloud: r.cloud as string,
  cid: r.cid as string,
  deployment: r.deployment as string,
  instanceId: (r.instance_id as string | null) ?? null,
  az: r.az as string,
  ips: JSON.parse(r.ips as string) as string[],
  sshHost: r.ssh_host as string,
  sshPort: r.ssh_port as number,
  sshUser: r.ssh_user as string,
  hostKey: (r.host_key as string | null) ?? null,
  baseDir: (r.base_dir as string | null) ?? null,
  createdAt: r.created_at as string,
});

export class Store {
  constructor(readonly db: Db, private readonly now: () => Date = () => new Date()) {}

  private ts(): string {
    return this.now().toISOString();
  }

  upsertDeployment(name: string, manifestFile: string, cloudConfigFile: string, clouds: CloudDef[]): void {
    const ts = this.ts();
    this.db
      .prepare(
        `INSERT INTO deployments (name, manifest_file, cloud_config_file, clouds, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET manifest_file = excluded.manifest_file, cloud_config_file = excluded.cloud_config_file,
           clouds = excluded.clouds, updated_at = excluded.updated_at`,
      )
      .run(name, manifestFile, cloudConfigFile, JSON.stringify(clouds), ts, ts);
  }

  deployment(name: string): DeploymentRow | null {
    const r = this.db.prepare('SELECT * FROM deployments WHERE name = ?').get(name) as Raw | undefined;
    return r ? { name: r.name as string, clouds: JSON.parse(r.clouds as string) as CloudDef[], manifestFile: r.manifest_file as string, cloudConfigFile: r.cloud_config_file as string, createdAt: r.created_at as string, updatedAt: r.updated_at as string } : null;
  }

  deployments(): DeploymentRow[] {
    return (this.db.prepare('SELECT name FROM deployments ORDER BY name').all() as Raw[]).map((r) => this.deployment(r.name as string)!);
  }

  deleteDeployment(name: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM instances WHERE deployment = ?').run(name);
      this.db.prepare('DELETE FROM vms WHERE deployment = ?').run(name);
      this.db.prepare('DELETE FROM deployments WHERE name = ?').run(name);
    })();
  }

  instances(deployment: string): InstanceRow[] {
    return (this.db.prepare('SELECT * FROM instances WHERE deployment = ? ORDER BY grp, idx').all(deployment) as Raw[]).map(toInstance);
  }

  instance(id: string): InstanceRow | null {
    const r = this.db.prepare('SELECT * FROM instances WHERE id = ?').get(id) as Raw | undefined;
    return r ? toInstance(r) : null;
  }

  insertInstance(row: Omit<InstanceRow, 'updatedAt'>): void {
    this.db
      .prepare(
        `INSERT INTO instances (id, deployment, grp, idx, az, cloud, vm_cid, state, applied, previous, error, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(row.id, row.deployment, row.group, row.index, row.az, row.cloud, row.vmCid, row.state, json(row.applied), json(row.previous), row.error, this.ts());
  }

  updateInstance(id: string, patch: Partial<Pick<InstanceRow, 'az' | 'cloud' | 'vmCid' | 'state' | 'applied' | 'previous' | 'error'>>): void {
    const cols: string[] = [];
    const vals: unknown[] = [];
    const map: Record<string, string> = { az: 'az', cloud: 'cloud', vmCid: 'vm_cid', state: 'state', applied: 'applied', previous: 'previous', error: 'error' };
    for (const [k, v] of Object.entries(patch)) {
      cols.push(`${map[k]} = ?`);
      vals.push(k === 'applied' || k === 'previous' ? json(v) : v);
    }
    cols.push('updated_at = ?');
    vals.push(this.ts());
    this.db.prepare(`UPDATE instances SET ${cols.join(', ')} WHERE id = ?`).run(...vals, id);
  }

  deleteInstance(id: string): void {
    this.db.prepare('DELETE FROM instances WHERE id = ?').run(id);
  }

  recordVm(row: VmRow): void {
    this.db
      .prepare(
        `INSERT OR REPLACE INTO vms (cloud, cid, deployment, instance_id, az, ips, ssh_host, ssh_port, ssh_user, host_key, base_dir, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(row.cloud, row.cid, row.deployment, row.instanceId, row.az, JSON.stringify(row.ips), row.sshHost, row.sshPort, row.sshUser, row.hostKey, row.baseDir ?? null, row.createdAt);
  }

  pinHostKey(cloud: string, cid: string, fingerprint: string): void {
    this.db.prepare('UPDATE vms SET host_key = ? WHERE cloud = ? AND cid = ? AND host_key IS NULL').run(fingerprint, cloud, cid);
  }

  vm(cloud: string, cid: string): VmRow | null {
    const r = this.db.prepare('SELECT * FROM vms WHERE cloud = ? AND cid = ?').get(cloud, cid) as Raw | undefined;
    return r ? toVm(r) : null;
  }

  vms(deployment: string): VmRow[] {
    return (this.db.prepare('SELECT * FROM vms WHERE deployment = ? ORDER BY created_at').all(deployment) as Raw[]).map(toVm);
  }

  deleteVm(cloud: string, cid: string): void {
    this.db.prepare('DELETE FROM vms WHERE cloud = ? AND cid = ?').run(cloud, cid);
  }
}

const json = (v: unknown) => (v === null || v === undefined ? null : JSON.stringify(v));
