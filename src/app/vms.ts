/** `director vms`: each instance with its VM, where it runs, and the live state of its jobs. */
import pLimit from 'p-limit';
import type { JobStatus } from '../instance/driver.js';
import { instanceConnector } from '../instance/routing.js';
import { ProviderSet } from '../providers/registry.js';
import { Ssh2Connector } from '../ssh/connection.js';
import type { DirectorContext } from './context.js';
import { observe } from './observe.js';

export interface VmInfo {
  deployment: string;
  instance: string;
  id: string;
  cid: string | null;
  cloud: string;
  az: string;
  ips: string[];
  /** running | failing | stopped | unresponsive | missing | failed | creating | updating */
  state: string;
  version: string | null;
  vm_type: string | null;
  processes: JobStatus[];
}

export async function listVms(ctx: DirectorContext, deployment?: string): Promise<VmInfo[]> {
  const deployments = deployment ? [ctx.store.deployment(deployment)].filter((d) => d !== null) : ctx.store.deployments();
  const out: VmInfo[] = [];
  const ssh = new Ssh2Connector({ connectAttempts: 2, readyTimeoutMs: 5000 });
  const limit = pLimit(16);
  for (const dep of deployments) {
    const providers = new ProviderSet(dep.clouds, ctx.home);
    const connector = instanceConnector(providers, ctx.keys.privateKey, ssh);
    try {
      const { listed } = await observe(ctx, providers, dep.name);
      const rows = ctx.store.instances(dep.name);
      const infos = await Promise.all(
        rows.map((row) =>
          limit(async (): Promise<VmInfo> => {
            const vm = row.vmCid ? ctx.store.vm(row.cloud, row.vmCid) : null;
            const job = row.applied?.jobs[0];
            const info: VmInfo = {
              deployment: dep.name,
              instance: `${row.group}/${row.index}`,
              id: row.id,
              cid: row.vmCid,
              cloud: row.cloud,
              az: row.az,
              ips: vm?.ips ?? [],
              state: row.state,
              version: job ? `${job.release}/${job.version.slice(0, 12)}` : null,
              vm_type: row.applied?.vmType ?? null,
              processes: [],
            };
            if (!vm || !listed.has(`${row.cloud}/${vm.cid}`)) return { ...info, state: 'missing' };
            if (row.state !== 'running') return info;
            try {
              const handle = await connector.open(vm, { label: info.instance, baseDir: vm.baseDir ?? providers.baseDir(row.cloud), log: () => {} });
              try {
                info.processes = await handle.status();
              } finally {
                handle.close();
              }
              const running = info.processes.filter((p) => p.state === 'running').length;
              info.state = info.processes.length > 0 && running === info.processes.length ? 'running' : running === 0 ? 'stopped' : 'failing';
            } catch {
              info.state = 'unresponsive';
            }
            return info;
          }),
        ),
      );
      out.push(...infos);
    } finally {
      await providers.closeAll();
    }
  }
  return out;
}
